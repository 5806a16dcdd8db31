"""Simulated SEV-SNP, TDX and H100 evidence, byte-exact, signed by a locally generated test PKI.

For machines without confidential hardware (laptops, CI): the evidence has the real
layouts, so the real parsers and signature checks run on it, but it is signed by keys
made on this machine. The simulated platform says so (`simulated-sev-snp`), and no
production root vouches for it: a verifier trusts it only when handed this PKI's roots
explicitly (`roots_pem()`).

    SNP: ATTESTATION_REPORT version 3, ECDSA P-384 VCEK, VCEK <- ASK <- ARK RSA-PSS
         (SHA-384, salt 48), delivered as a GHCB certificate table like configfs-tsm's
         auxblob.
         The ARK also signs a CRL (`amd_crl`), as AMD's KDS does per chip family.
    GPU: SPDM 1.1 GET_MEASUREMENTS request and signed MEASUREMENTS response, device
         chain leaf <- root (ECDSA P-384).
    TDX: `attestation.simulated.intel` (quotes and Intel collateral).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import struct
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from attestation import snp
from attestation.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, build_cert_table
from attestation.simulated.intel import SimulatedIntel

PKI_FILE = "simulated-pki-v4.json"  # v4: the GPU root's key, for OCSP
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
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    chip_id: bytes
    gpu_root: x509.Certificate
    gpu_leaf: x509.Certificate
    gpu_key: ec.EllipticCurvePrivateKey
    gpu_root_key: ec.EllipticCurvePrivateKey  # signs the simulated OCSP responses
    intel: SimulatedIntel

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
        return cls(ark_key, ark, ask, vcek, vcek_key, chip_id, *_gpu_pki(),
                   SimulatedIntel.generate())

    @classmethod
    def load_or_create(cls, folder: Path) -> SimulatedPki:
        """The PKI kept in `folder` (private keys 0600), made on first use."""
        path = folder / PKI_FILE
        if path.exists():
            return cls._load(json.loads(path.read_text()))
        pki = cls.generate()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(pki._dump(), fh)
        tmp.rename(path)
        return pki

    def _dump(self) -> dict[str, str]:
        """Every key and certificate as PEM, by field name (Intel's under `intel.`)."""
        out = {"chip_id": self.chip_id.hex()}
        for prefix, obj in (("", self), ("intel.", self.intel)):
            for f in fields(obj):
                value = getattr(obj, f.name)
                if isinstance(value, x509.Certificate):
                    out[prefix + f.name] = value.public_bytes(serialization.Encoding.PEM).decode()
                elif isinstance(value, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                    out[prefix + f.name] = value.private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption()).decode()
        return out

    @classmethod
    def _load(cls, data: dict[str, str]) -> SimulatedPki:
        def load(name: str) -> Any:
            pem = data[name].encode()
            if b"PRIVATE KEY" in pem:
                return serialization.load_pem_private_key(pem, None)
            return x509.load_pem_x509_certificate(pem)

        intel = SimulatedIntel(**{f.name: load("intel." + f.name) for f in fields(SimulatedIntel)})
        own = {f.name: load(f.name) for f in fields(cls) if f.name not in ("chip_id", "intel")}
        return cls(**own, chip_id=bytes.fromhex(data["chip_id"]), intel=intel)

    def roots_pem(self) -> bytes:
        """The roots a verifier must be handed, explicitly, to accept simulated evidence."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (self.ark, self.gpu_root, self.intel.root))

    def gpu_ocsp(self, *, now: dt.datetime | None = None, revoked: bool = False,
                 next_update: dt.timedelta = dt.timedelta(days=7)) -> tuple[bytes, ...]:
        """The simulated NVIDIA responder's answer for the GPU chain's leaf, signed by the
        root that issued it (DER)."""
        now = now or dt.datetime.now(dt.UTC)
        status = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
        response = ocsp.OCSPResponseBuilder().add_response(
            cert=self.gpu_leaf, issuer=self.gpu_root, algorithm=hashes.SHA384(),
            cert_status=status, this_update=now - dt.timedelta(hours=1),
            next_update=now + next_update,
            revocation_time=now - dt.timedelta(days=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, self.gpu_root).sign(
            self.gpu_root_key, hashes.SHA384())
        return (response.public_bytes(serialization.Encoding.DER),)

    def gpu_chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM)
                        for c in (self.gpu_leaf, self.gpu_root))

    def cert_table(self) -> bytes:
        """A GHCB certificate table (configfs-tsm `auxblob`): VCEK, ASK, ARK (DER)."""
        return build_cert_table({VCEK_GUID: _der(self.vcek), ASK_GUID: _der(self.ask),
                                 ARK_GUID: _der(self.ark)})

    def amd_crl(self, *, now: dt.datetime | None = None, revoked: tuple[int, ...] = (),
                days: int = 7) -> bytes:
        """The ARK's certificate revocation list (DER, RSA-PSS), as AMD's KDS serves it
        for a chip family: issued a day before `now`, valid for `days`."""
        issued = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0) - dt.timedelta(days=1)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
                   .last_update(issued).next_update(issued + dt.timedelta(days=days)))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(issued).build())
        crl = builder.sign(self.ark_key, hashes.SHA384(), rsa_padding=_PSS)
        return crl.public_bytes(serialization.Encoding.DER)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def simulated_measurement() -> bytes:
    """A stand-in launch digest: what the simulated VM 'measured'."""
    return hashlib.sha384(b"cloister simulated launch measurement v1").digest()


# SMT allowed, no DEBUG, no migration agent (the ABI's bit 17 is reserved, must be one).
SIMULATED_GUEST_POLICY = 0x30000


def snp_report(pki: SimulatedPki, report_data: bytes, *, host_data: bytes = b"",
               vmpl: int = 0, guest_policy: int = SIMULATED_GUEST_POLICY) -> bytes:
    """An SNP ATTESTATION_REPORT version 3 over `report_data`, signed by the VCEK;
    `host_data` is what a host would set at launch (HOST_DATA, 32 bytes); `vmpl` and
    `guest_policy` are what a hostile host could launch with."""
    raw = bytearray(snp.REPORT_SIZE)
    tcb = bytes([SIMULATED_TCB.boot_loader, SIMULATED_TCB.tee, 0, 0, 0, 0, SIMULATED_TCB.snp,
                 SIMULATED_TCB.microcode])
    struct.pack_into("<IIQ", raw, 0, 3, 0, guest_policy)  # version 3
    struct.pack_into("<II", raw, 0x30, vmpl, snp.SIG_ALGO_ECDSA_P384_SHA384)
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


def _gpu_pki() -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey,
                        ec.EllipticCurvePrivateKey]:
    """The simulated GPU's root, its attestation certificate, their keys."""
    gpu_root_key = ec.generate_private_key(ec.SECP384R1())
    gpu_key = ec.generate_private_key(ec.SECP384R1())
    gpu_root = _cert("Simulated NVIDIA Device Identity CA", gpu_root_key.public_key(),
                     "Simulated NVIDIA Device Identity CA", gpu_root_key, ca=True, pss=False)
    gpu_leaf = _cert("Simulated GH100 Attestation", gpu_key.public_key(),
                     "Simulated NVIDIA Device Identity CA", gpu_root_key, ca=False, pss=False)
    return gpu_root, gpu_leaf, gpu_key, gpu_root_key


def gpu_measurement(index: int) -> bytes:
    return hashlib.sha384(b"simulated gpu measurement %d" % index).digest()


def gpu_report(pki: SimulatedPki, nonce: bytes, *, mode: int | None = None) -> bytes:
    """SPDM 1.1 GET_MEASUREMENTS(nonce) and a signed MEASUREMENTS response; `mode` is
    the CC mode's FEATURE_FLAG (None: none, as Hopper drivers before it sent)."""
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    blocks = b""
    for index in range(1, 5):
        digest = gpu_measurement(index)
        measurement = b"\x01" + struct.pack("<H", len(digest)) + digest
        blocks += bytes([index, 0x01]) + struct.pack("<H", len(measurement)) + measurement
    opaque = b""
    tlvs = [(3, SIMULATED_DRIVER_VERSION), (6, SIMULATED_VBIOS)]
    if mode is not None:
        tlvs.append((36, bytes([mode])))
    for kind, value in tlvs:
        opaque += struct.pack("<HH", kind, len(value)) + value
    response = (bytes([0x11, 0x60, 0x00, 0x00, 4]) + len(blocks).to_bytes(3, "little") + blocks
                + os.urandom(32) + struct.pack("<H", len(opaque)) + opaque)
    der = pki.gpu_key.sign(request + response, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")
