"""A simulated Intel DCAP PKI: TDX quotes and the collateral that evaluates them.

Everything Intel's Provisioning Certification Service hands out, made on this machine
in the real formats, so the real verifier (`dcap-qvl`, through `attestation.tdx`) runs
on it: a root CA, a PCK Platform CA, a PCK leaf carrying the SGX extension (FMSPC, TCB
components, PCE-ID, SGX type, configuration), a TCB signing certificate, TCB info and
QE identity JSON signed by it, and both CRLs. Tests change one part (a revoked PCK, a
QE report with DEBUG set, an OutOfDate TCB level, stale dates) and watch the verdict.

Layouts: Intel SGX PCK Certificate and CRL Profile; Intel PCS API v4 (TCB info v3,
QE identity v2); TDX DCAP quote v4 (`attestation.tdx`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from dataclasses import dataclass, field

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SGX_EXTENSION = "1.2.840.113741.1.13.1"
FMSPC = bytes.fromhex("50806f000000")
PCE_ID = b"\x00\x00"
SGX_TCB = (2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
PCE_SVN = 11
TDX_TCB = (5, 0, 2) + (0,) * 13
# What Intel's TD quoting enclave reports (and its QE identity names).
QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
QE_PROD_ID = 2
QE_SVN = 4
QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
MR_SEAM = hashlib.sha384(b"cloister simulated TDX module v1").digest()
TD_ATTRIBUTES = (1 << 28).to_bytes(8, "little")  # SEPT_VE_DISABLE, as real TDs run
_VALIDITY = dt.timedelta(days=3650)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cloister simulated TEE"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, public: ec.EllipticCurvePublicKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
          extra: x509.ExtensionType | None = None) -> x509.Certificate:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    usage = x509.KeyUsage(digital_signature=not ca, content_commitment=not ca,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                          decipher_only=False)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(public).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + _VALIDITY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(usage, critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class _SgxType(core.Enumerated):  # type: ignore[misc]  # asn1crypto has no types
    _map = {0: "standard", 1: "scalable", 2: "scalable_with_integrity"}


def _pair(oid: str, value: core.Asn1Value) -> bytes:
    encoded: bytes = core.Sequence(contents=core.ObjectIdentifier(oid).dump() + value.dump()).dump()
    return encoded


def _sgx_extension() -> x509.UnrecognizedExtension:
    """The SGX extension of a PCK certificate (Platform CA profile)."""
    base = SGX_EXTENSION
    tcb = b"".join(_pair(f"{base}.2.{i + 1}", core.Integer(svn)) for i, svn in enumerate(SGX_TCB))
    tcb += _pair(f"{base}.2.17", core.Integer(PCE_SVN))
    tcb += _pair(f"{base}.2.18", core.OctetString(bytes(SGX_TCB)))
    config = b"".join(_pair(f"{base}.7.{i}", core.Boolean(True)) for i in (1, 2, 3))
    body = (_pair(f"{base}.1", core.OctetString(hashlib.sha256(b"ppid").digest()[:16]))
            + core.Sequence(contents=core.ObjectIdentifier(f"{base}.2").dump()
                            + core.Sequence(contents=tcb).dump()).dump()
            + _pair(f"{base}.3", core.OctetString(PCE_ID))
            + _pair(f"{base}.4", core.OctetString(FMSPC))
            + _pair(f"{base}.5", _SgxType(1))
            + _pair(f"{base}.6", core.OctetString(hashlib.sha256(b"instance").digest()[:16]))
            + core.Sequence(contents=core.ObjectIdentifier(f"{base}.7").dump()
                            + core.Sequence(contents=config).dump()).dump())
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION),
                                      core.Sequence(contents=body).dump())


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


@dataclass(frozen=True)
class QeReport:
    """What the simulated quoting enclave puts in its report (the QE identity checks it)."""

    attributes: bytes = QE_ATTRIBUTES
    mrsigner: bytes = QE_MRSIGNER
    prod_id: int = QE_PROD_ID
    svn: int = QE_SVN

    def build(self, report_data: bytes) -> bytes:
        raw = bytearray(384)
        raw[0:16] = bytes(SGX_TCB)  # CPUSVN
        raw[48:64] = self.attributes
        raw[128:160] = self.mrsigner
        struct.pack_into("<HH", raw, 256, self.prod_id, self.svn)
        raw[320:384] = report_data
        return bytes(raw)


@dataclass(frozen=True, repr=False)
class SimulatedIntel:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck_leaf: x509.Certificate
    tcb_signer_key: ec.EllipticCurvePrivateKey
    tcb_signer: x509.Certificate
    attestation_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __repr__(self) -> str:
        return "SimulatedIntel([keys redacted])"

    @classmethod
    def generate(cls) -> SimulatedIntel:
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
        root_key, pck_ca_key, pck_key, signer_key = keys
        root_cn, ca_cn = "Simulated Intel SGX Root CA", "Simulated Intel SGX PCK Platform CA"
        root = _cert(root_cn, root_key.public_key(), root_cn, root_key, ca=True)
        pck_ca = _cert(ca_cn, pck_ca_key.public_key(), root_cn, root_key, ca=True)
        leaf = _cert("Simulated Intel SGX PCK Certificate", pck_key.public_key(), ca_cn,
                     pck_ca_key, ca=False, extra=_sgx_extension())
        signer = _cert("Simulated Intel SGX TCB Signing", signer_key.public_key(), root_cn,
                       root_key, ca=False)
        return cls(root_key, root, pck_ca_key, pck_ca, pck_key, leaf, signer_key, signer)

    def pck_chain_pem(self) -> bytes:
        return _pem(self.pck_leaf, self.pck_ca, self.root).encode()

    def quote(self, report_data: bytes, *, config_id: bytes = b"", qe: QeReport = QeReport(),
              td_attributes: bytes = TD_ATTRIBUTES, mr_seam: bytes = MR_SEAM,
              measurement: bytes = b"") -> bytes:
        """A TDX DCAP quote v4 over `report_data`, signed by the attestation key, whose
        QE report (signed by the PCK) binds that key; PCK chain inside (type 5)."""
        header = struct.pack("<HHIHH", 4, 2, 0x81, 0, PCE_SVN) + QE_VENDOR_ID + b"\x00" * 20
        body = bytearray(584)
        body[0:16] = bytes(TDX_TCB)  # TEE_TCB_SVN
        body[16:64] = mr_seam
        body[120:128] = td_attributes
        body[136:184] = measurement.ljust(48, b"\x00")[:48]  # MRTD
        body[184:232] = config_id.ljust(48, b"\x00")[:48]  # MRCONFIGID, set by the host
        body[520:584] = report_data
        signed = header + bytes(body)
        public = self.attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        qe_auth = hashlib.sha256(b"simulated qe auth data").digest()
        qe_report = qe.build(hashlib.sha256(public + qe_auth).digest() + b"\x00" * 32)
        chain = self.pck_chain_pem()
        cert6 = (qe_report + _raw_signature(self.pck_key, qe_report)
                 + struct.pack("<H", len(qe_auth)) + qe_auth
                 + struct.pack("<HI", 5, len(chain)) + chain)
        sig_data = (_raw_signature(self.attestation_key, signed) + public
                    + struct.pack("<HI", 6, len(cert6)) + cert6)
        return signed + struct.pack("<I", len(sig_data)) + sig_data

    def _crl(self, issuer: str, key: ec.EllipticCurvePrivateKey, revoked: tuple[int, ...],
             issued: dt.datetime, next_update: dt.datetime) -> bytes:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(_name(issuer))
                   .last_update(issued).next_update(next_update)
                   .add_extension(x509.CRLNumber(1), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       key.public_key()), critical=False))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(issued).build())
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def collateral(self, *, now: dt.datetime | None = None, tcb_status: str = "UpToDate",
                   revoked_pcks: tuple[int, ...] = (), days: int = 30) -> dict[str, str]:
        """The collateral of this platform in dcap-qvl's `QuoteCollateralV3` JSON form,
        issued a day before `now` and valid for `days`."""
        issued = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0) - dt.timedelta(days=1)
        until = issued + dt.timedelta(days=days)
        level = {"tcbDate": _stamp(issued - dt.timedelta(days=90)), "tcbStatus": tcb_status}
        tcb_info = json.dumps({
            "id": "TDX", "version": 3, "issueDate": _stamp(issued), "nextUpdate": _stamp(until),
            "fmspc": FMSPC.hex().upper(), "pceId": PCE_ID.hex(), "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8,
                          "attributesMask": "FF" * 8},
            "tcbLevels": [{"tcb": {"sgxtcbcomponents": [{"svn": s} for s in SGX_TCB],
                                   "pcesvn": PCE_SVN,
                                   "tdxtcbcomponents": [{"svn": s} for s in TDX_TCB]},
                           **level}]}, separators=(",", ":"))
        qe_identity = json.dumps({
            "id": "TD_QE", "version": 2, "issueDate": _stamp(issued),
            "nextUpdate": _stamp(until), "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
            "attributes": QE_ATTRIBUTES.hex().upper(),
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": QE_MRSIGNER.hex().upper(), "isvprodid": QE_PROD_ID,
            "tcbLevels": [{"tcb": {"isvsvn": QE_SVN}, "tcbDate": level["tcbDate"],
                           "tcbStatus": "UpToDate"}]}, separators=(",", ":"))
        signer_chain = _pem(self.tcb_signer, self.root)
        return {
            "pck_crl_issuer_chain": _pem(self.pck_ca, self.root),
            "root_ca_crl": self._crl("Simulated Intel SGX Root CA", self.root_key, (), issued,
                                     until).hex(),
            "pck_crl": self._crl("Simulated Intel SGX PCK Platform CA", self.pck_ca_key,
                                 revoked_pcks, issued, until).hex(),
            "tcb_info_issuer_chain": signer_chain, "tcb_info": tcb_info,
            "tcb_info_signature": _raw_signature(self.tcb_signer_key, tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": signer_chain, "qe_identity": qe_identity,
            "qe_identity_signature": _raw_signature(self.tcb_signer_key,
                                                    qe_identity.encode()).hex(),
        }
