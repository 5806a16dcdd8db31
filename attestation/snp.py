"""AMD SEV-SNP attestation reports: parse and verify.

Layout: AMD SEV-SNP ABI specification (publication 56860), Table 22 ATTESTATION_REPORT.
The signature is ECDSA P-384 with SHA-384 over bytes 0x000..0x29F; r and s are 72-byte
little-endian fields at 0x2A0 and 0x2E8. The VCEK that signs it chains VCEK <- ASK <- ARK
(RSA-PSS), and its extensions 1.3.6.1.4.1.3704.1.3.{1,2,3,8} (boot loader, TEE, SNP,
microcode SPL) must equal the report's reported_tcb and 1.3.6.1.4.1.3704.1.4 (hwID) its
chip_id.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.errors import Reason, VerificationError
from attestation.x509chain import verify_chain, verify_ecdsa

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIG_ALGO_ECDSA_P384_SHA384 = 1
SUPPORTED_VERSIONS = (2, 3, 5)
POLICY_DEBUG_BIT = 1 << 19

# VCEK extension OIDs (AMD "Versioned Chip Endorsement Key" specification).
_OID_BL = "1.3.6.1.4.1.3704.1.3.1"
_OID_TEE = "1.3.6.1.4.1.3704.1.3.2"
_OID_SNP = "1.3.6.1.4.1.3704.1.3.3"
_OID_UCODE = "1.3.6.1.4.1.3704.1.3.8"
_OID_HWID = "1.3.6.1.4.1.3704.1.4"


@dataclass(frozen=True)
class TcbVersion:
    """TCB_VERSION of Milan/Genoa: bytes 0 boot loader, 1 TEE, 6 SNP, 7 microcode."""

    boot_loader: int
    tee: int
    snp: int
    microcode: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> TcbVersion:
        return cls(raw[0], raw[1], raw[6], raw[7])

    def at_least(self, other: TcbVersion) -> bool:
        return (self.boot_loader >= other.boot_loader and self.tee >= other.tee
                and self.snp >= other.snp and self.microcode >= other.microcode)


@dataclass(frozen=True)
class SnpReport:
    version: int
    guest_svn: int
    policy: int
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    report_id: bytes
    reported_tcb: TcbVersion
    chip_id: bytes
    committed_tcb: TcbVersion
    launch_tcb: TcbVersion
    signed_bytes: bytes
    signature_r: int
    signature_s: int

    @property
    def debug_allowed(self) -> bool:
        return bool(self.policy & POLICY_DEBUG_BIT)

    @classmethod
    def parse(cls, raw: bytes) -> SnpReport:
        if len(raw) != REPORT_SIZE:
            raise VerificationError(Reason.MALFORMED,
                                    f"SNP report must be {REPORT_SIZE} bytes, got {len(raw)}")
        version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
        if version not in SUPPORTED_VERSIONS:
            raise VerificationError(Reason.UNSUPPORTED, f"SNP report version {version}")
        vmpl, algo = struct.unpack_from("<II", raw, 0x30)
        if algo != SIG_ALGO_ECDSA_P384_SHA384:
            raise VerificationError(Reason.UNSUPPORTED, f"SNP signature algorithm {algo}")
        tcb = TcbVersion.from_bytes
        return cls(
            version=version, guest_svn=guest_svn, policy=policy, vmpl=vmpl,
            signature_algo=algo, current_tcb=tcb(raw[0x38:0x40]),
            report_data=raw[0x50:0x90], measurement=raw[0x90:0xC0], host_data=raw[0xC0:0xE0],
            id_key_digest=raw[0xE0:0x110], report_id=raw[0x140:0x160],
            reported_tcb=tcb(raw[0x180:0x188]), chip_id=raw[0x1A0:0x1E0],
            committed_tcb=tcb(raw[0x1E0:0x1E8]), launch_tcb=tcb(raw[0x1F0:0x1F8]),
            signed_bytes=raw[:SIGNED_SIZE],
            signature_r=int.from_bytes(raw[0x2A0:0x2E8], "little"),
            signature_s=int.from_bytes(raw[0x2E8:0x330], "little"),
        )


def _extension_int(vcek: x509.Certificate, oid: str) -> int:
    raw = _extension_raw(vcek, oid)
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2:
        raise VerificationError(Reason.MALFORMED, f"VCEK extension {oid} is not an INTEGER")
    return int.from_bytes(raw[2:], "big")


def _extension_raw(vcek: x509.Certificate, oid: str) -> bytes:
    try:
        ext = vcek.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        raise VerificationError(Reason.MALFORMED, f"VCEK lacks extension {oid}") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise VerificationError(Reason.MALFORMED, f"unexpected VCEK extension {oid}")
    return value.value


def check_vcek_matches(report: SnpReport, vcek: x509.Certificate) -> None:
    tcb = report.reported_tcb
    for oid, want, name in ((_OID_BL, tcb.boot_loader, "boot loader"), (_OID_TEE, tcb.tee, "TEE"),
                            (_OID_SNP, tcb.snp, "SNP"), (_OID_UCODE, tcb.microcode, "microcode")):
        if _extension_int(vcek, oid) != want:
            raise VerificationError(Reason.TCB_MISMATCH,
                                    f"VCEK {name} SPL differs from the reported TCB")
    hwid = _extension_raw(vcek, _OID_HWID)
    if hwid.startswith(b"\x04\x40") and len(hwid) == 66:  # DER OCTET STRING, if wrapped
        hwid = hwid[2:]
    if hwid != report.chip_id:
        raise VerificationError(Reason.CHIP_MISMATCH, "VCEK hwID differs from the chip_id")


def verify_snp_report(
    raw: bytes, *, vcek: x509.Certificate, ask: x509.Certificate, ark: x509.Certificate,
    trusted_arks: frozenset[str], now: dt.datetime,
) -> SnpReport:
    """Parse `raw`, check its signature by `vcek` and the chain to a pinned ARK."""
    report = SnpReport.parse(raw)
    verify_chain([vcek, ask, ark], trusted_roots=trusted_arks, now=now)
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationError(Reason.UNSUPPORTED, "VCEK is not an ECDSA P-384 key")
    verify_ecdsa(key, report.signature_r, report.signature_s, report.signed_bytes,
                 hashes.SHA384(), what="SNP report signature")
    check_vcek_matches(report, vcek)
    return report
