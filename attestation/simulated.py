"""Simulated SEV-SNP and H100 evidence, byte-exact, signed by a locally generated test PKI.

For machines without confidential hardware (laptops, CI): the evidence has the real
layouts, so the real parsers and signature checks run on it, but it is signed by keys
made on this machine. The simulated platform says so (`simulated-sev-snp`), and no
production root vouches for it: a verifier trusts it only when handed this PKI's roots
explicitly (`roots_pem()`).

    SNP: ATTESTATION_REPORT version 3, ECDSA P-384 VCEK, VCEK <- ASK <- ARK RSA-PSS
         (SHA-384, salt 48), delivered as a GHCB certificate table like configfs-tsm's
         auxblob.
    GPU: SPDM 1.1 GET_MEASUREMENTS request and signed MEASUREMENTS response, device
         chain leaf <- root (ECDSA P-384).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation import snp
from attestation.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, build_cert_table

PKI_FILE = "simulated-pki-v2.pem"
SIMULATED_TCB = snp.TcbVersion(boot_loader=4, tee=0, snp=22, microcode=213)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_VALIDITY = dt.timedelta(days=3650)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cloister simulated TEE"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key_pub: object, issuer: str, issuer_key: object, *, ca: bool,
          pss: bool, extensions: list[x509.ExtensionType] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key_pub)  # type: ignore[arg-type]
               .serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + _VALIDITY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    for ext in extensions or []:
        builder = builder.add_extension(ext, critical=False)
    if pss:
        return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=_PSS)  # type: ignore[arg-type]
    return builder.sign(issuer_key, hashes.SHA384())  # type: ignore[arg-type]


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return b"\x02" + bytes([len(body)]) + body


def _vcek_extensions(tcb: snp.TcbVersion, chip_id: bytes) -> list[x509.ExtensionType]:
    pairs = [("1.3.6.1.4.1.3704.1.3.1", _der_int(tcb.boot_loader)),
             ("1.3.6.1.4.1.3704.1.3.2", _der_int(tcb.tee)),
             ("1.3.6.1.4.1.3704.1.3.3", _der_int(tcb.snp)),
             ("1.3.6.1.4.1.3704.1.3.8", _der_int(tcb.microcode)),
             ("1.3.6.1.4.1.3704.1.4", chip_id)]
    return [x509.UnrecognizedExtension(x509.ObjectIdentifier(o), v) for o, v in pairs]


@dataclass(frozen=True, repr=False)
class SimulatedPki:
    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    chip_id: bytes
    gpu_root: x509.Certificate
    gpu_leaf: x509.Certificate
    gpu_key: ec.EllipticCurvePrivateKey
    intel_root: x509.Certificate
    pck_ca: x509.Certificate
    pck_leaf: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    tdx_attestation_key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return "SimulatedPki([keys redacted])"

    @classmethod
    def generate(cls) -> SimulatedPki:
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        vcek_key = ec.generate_private_key(ec.SECP384R1())
        chip_id = os.urandom(64)
        ark = _cert("ARK-Simulated", ark_key.public_key(), "ARK-Simulated", ark_key, ca=True,
                    pss=True)
        ask = _cert("SEV-Simulated", ask_key.public_key(), "ARK-Simulated", ark_key, ca=True,
                    pss=True)
        vcek = _cert("SEV-VCEK-Simulated", vcek_key.public_key(), "SEV-Simulated", ask_key,
                     ca=False, pss=True, extensions=_vcek_extensions(SIMULATED_TCB, chip_id))
        gpu_root_key = ec.generate_private_key(ec.SECP384R1())
        gpu_key = ec.generate_private_key(ec.SECP384R1())
        gpu_root = _cert("Simulated NVIDIA Device Identity CA", gpu_root_key.public_key(),
                         "Simulated NVIDIA Device Identity CA", gpu_root_key, ca=True, pss=False)
        gpu_leaf = _cert("Simulated GH100 Attestation", gpu_key.public_key(),
                         "Simulated NVIDIA Device Identity CA", gpu_root_key, ca=False, pss=False)
        intel_key = ec.generate_private_key(ec.SECP256R1())
        pck_ca_key = ec.generate_private_key(ec.SECP256R1())
        pck_key = ec.generate_private_key(ec.SECP256R1())
        intel_root = _cert("Simulated Intel SGX Root CA", intel_key.public_key(),
                           "Simulated Intel SGX Root CA", intel_key, ca=True, pss=False)
        pck_ca = _cert("Simulated Intel SGX PCK Platform CA", pck_ca_key.public_key(),
                       "Simulated Intel SGX Root CA", intel_key, ca=True, pss=False)
        pck_leaf = _cert("Simulated Intel SGX PCK Certificate", pck_key.public_key(),
                         "Simulated Intel SGX PCK Platform CA", pck_ca_key, ca=False, pss=False)
        att_key = ec.generate_private_key(ec.SECP256R1())
        return cls(ark, ask, vcek, vcek_key, chip_id, gpu_root, gpu_leaf, gpu_key, intel_root,
                   pck_ca, pck_leaf, pck_key, att_key)

    @classmethod
    def load_or_create(cls, folder: Path) -> SimulatedPki:
        """The PKI kept in `folder` (private keys 0600), made on first use."""
        path = folder / PKI_FILE
        if path.exists():
            return cls._load(path.read_bytes())
        pki = cls.generate()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pki._dump())
        tmp.rename(path)
        return pki

    def _dump(self) -> bytes:
        pem = serialization.Encoding.PEM
        pkcs8, clear = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        keys = [k.private_bytes(pem, pkcs8, clear) for k in
                (self.vcek_key, self.gpu_key, self.pck_key, self.tdx_attestation_key)]
        certs = [c.public_bytes(pem) for c in (self.ark, self.ask, self.vcek, self.gpu_root,
                                               self.gpu_leaf, self.intel_root, self.pck_ca,
                                               self.pck_leaf)]
        return b"".join(keys + certs) + b"CHIP-ID " + self.chip_id.hex().encode() + b"\n"

    @classmethod
    def _load(cls, data: bytes) -> SimulatedPki:
        certs = x509.load_pem_x509_certificates(data)
        blocks = data.split(b"-----END PRIVATE KEY-----")
        keys = [serialization.load_pem_private_key(b + b"-----END PRIVATE KEY-----", None)
                for b in blocks[:4]]
        chip = bytes.fromhex(data.rsplit(b"CHIP-ID ", 1)[1].strip().decode())
        ec_keys = [k for k in keys if isinstance(k, ec.EllipticCurvePrivateKey)]
        if len(ec_keys) != 4:
            raise ValueError("damaged simulated PKI file")
        vcek_key, gpu_key, pck_key, att_key = ec_keys
        return cls(certs[0], certs[1], certs[2], vcek_key, chip, certs[3], certs[4], gpu_key,
                   certs[5], certs[6], certs[7], pck_key, att_key)

    def roots_pem(self) -> bytes:
        """The roots a verifier must be handed, explicitly, to accept simulated evidence."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (self.ark, self.gpu_root, self.intel_root))

    def gpu_chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (self.gpu_leaf, self.gpu_root))

    def cert_table(self) -> bytes:
        """A GHCB certificate table (configfs-tsm `auxblob`): VCEK, ASK, ARK (DER)."""
        return build_cert_table({VCEK_GUID: _der(self.vcek), ASK_GUID: _der(self.ask),
                                 ARK_GUID: _der(self.ark)})


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def simulated_measurement() -> bytes:
    """A stand-in launch digest: what the simulated VM 'measured'."""
    return hashlib.sha384(b"cloister simulated launch measurement v1").digest()


def snp_report(pki: SimulatedPki, report_data: bytes, *, host_data: bytes = b"") -> bytes:
    """An SNP ATTESTATION_REPORT version 3 over `report_data`, signed by the VCEK;
    `host_data` is what a host would set at launch (HOST_DATA, 32 bytes)."""
    raw = bytearray(snp.REPORT_SIZE)
    tcb = bytes([SIMULATED_TCB.boot_loader, SIMULATED_TCB.tee, 0, 0, 0, 0, SIMULATED_TCB.snp,
                 SIMULATED_TCB.microcode])
    struct.pack_into("<IIQ", raw, 0, 3, 0, 0x30000)  # version 3; policy: SMT, no DEBUG
    struct.pack_into("<II", raw, 0x30, 0, snp.SIG_ALGO_ECDSA_P384_SHA384)
    raw[0x38:0x40] = tcb
    raw[0x50:0x90] = report_data
    raw[0x90:0xC0] = simulated_measurement()
    raw[0xC0:0xE0] = host_data.ljust(32, b"\x00")[:32]
    raw[0x140:0x160] = hashlib.sha256(pki.chip_id).digest()  # report_id
    for off in (0x180, 0x1E0, 0x1F0):
        raw[off:off + 8] = tcb
    raw[0x1A0:0x1E0] = pki.chip_id
    der = pki.vcek_key.sign(bytes(raw[:snp.SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
    raw[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(raw)


SIMULATED_DRIVER_VERSION = b"550.90.07\x00"
SIMULATED_VBIOS = bytes([0x00, 0x9F, 0x00, 0x96, 0x01, 0x00, 0x00, 0x00])
SIMULATED_VBIOS_VERSION = "96.00.9F.00.01"  # how verifiers print SIMULATED_VBIOS


def gpu_report(pki: SimulatedPki, nonce: bytes) -> bytes:
    """SPDM 1.1 GET_MEASUREMENTS(nonce) and a signed MEASUREMENTS response."""
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    blocks = b""
    for index in range(1, 5):
        digest = hashlib.sha384(b"simulated gpu measurement %d" % index).digest()
        measurement = b"\x01" + struct.pack("<H", len(digest)) + digest
        blocks += bytes([index, 0x01]) + struct.pack("<H", len(measurement)) + measurement
    opaque = b""
    for kind, value in ((3, SIMULATED_DRIVER_VERSION), (6, SIMULATED_VBIOS)):
        opaque += struct.pack("<HH", kind, len(value)) + value
    response = (bytes([0x11, 0x60, 0x00, 0x00, 4]) + len(blocks).to_bytes(3, "little") + blocks
                + os.urandom(32) + struct.pack("<H", len(opaque)) + opaque)
    der = pki.gpu_key.sign(request + response, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


# Intel's QE vendor id (DCAP), as real quotes carry it.
QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


def _p256_raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def tdx_quote(pki: SimulatedPki, report_data: bytes, *, config_id: bytes = b"") -> bytes:
    """A TDX DCAP quote version 4 over `report_data`: quote signed by the attestation key,
    QE report signed by the PCK leaf and binding that key, PCK chain (type 5) inside the
    QE report certification data (type 6)."""
    header = struct.pack("<HHIHH", 4, 2, 0x81, 0, 0) + QE_VENDOR_ID + b"\x00" * 20
    body = bytearray(584)
    body[136:184] = simulated_measurement()  # MRTD
    body[184:232] = config_id.ljust(48, b"\x00")[:48]  # MRCONFIGID, set by the host
    body[520:584] = report_data
    signed = header + bytes(body)
    public = pki.tdx_attestation_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    qe_auth = hashlib.sha256(b"simulated qe auth data").digest()
    qe_report = bytearray(384)
    qe_report[320:352] = hashlib.sha256(public + qe_auth).digest()
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM)
                     for c in (pki.pck_leaf, pki.pck_ca, pki.intel_root))
    cert6 = (bytes(qe_report) + _p256_raw_signature(pki.pck_key, bytes(qe_report))
             + struct.pack("<H", len(qe_auth)) + qe_auth
             + struct.pack("<HI", 5, len(chain)) + chain)
    sig_data = (_p256_raw_signature(pki.tdx_attestation_key, signed) + public
                + struct.pack("<HI", 6, len(cert6)) + cert6)
    return signed + struct.pack("<I", len(sig_data)) + sig_data
