"""NVIDIA H100 confidential-computing attestation reports (SPDM 1.1): parse and verify.

Layout: DMTF DSP0274 (SPDM 1.1), GET_MEASUREMENTS and MEASUREMENTS.
    request  = version(1) code(1)=0xE0 param1(1) param2(1) nonce(32) slot_id(1)
    response = version(1) code(1)=0x60 param1(1) param2(1) number_of_blocks(1)
               record_length(3, LE) record nonce(32) opaque_length(2, LE) opaque
               signature(96: P-384 r||s, big-endian)
The signature (ECDSA P-384, SHA-384) covers request || response-without-signature and
is made by the leaf of the GPU's certificate chain, which ends at the pinned NVIDIA
Device Identity CA. The request nonce is the verifier's: it must be the expected one.
NVIDIA's opaque data is type(2, LE) size(2, LE) value TLVs; 3 is the driver version, 6
the VBIOS version, 36 the CC mode (FEATURE_FLAG, newer drivers).
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.errors import Reason, VerificationError
from attestation.x509chain import load_pem_chain, verify_chain, verify_ecdsa

REQUEST_SIZE = 37
SIGNATURE_SIZE = 96
SPDM_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_FEATURE_FLAG = 36  # the CC mode: 0 single GPU, 1 multi-GPU, 2 protected PCIe
_MODES = {0: "spt", 1: "mpt", 2: "ppcie"}
MAX_REPORT_SIZE = 64 * 1024


@dataclass(frozen=True)
class GpuReport:
    request_nonce: bytes
    measurements: dict[int, bytes]
    opaque: dict[int, bytes]
    signed_bytes: bytes
    signature: bytes

    @property
    def driver_version(self) -> str:
        return self.opaque.get(OPAQUE_DRIVER_VERSION, b"").rstrip(b"\x00").decode(
            "ascii", "replace")

    @property
    def vbios_version(self) -> str:
        raw = self.opaque.get(OPAQUE_VBIOS_VERSION, b"")
        if len(raw) < 5:
            return ""
        word = struct.unpack_from("<I", raw)[0]
        parts = [(word >> s) & 0xFF for s in (24, 16, 8, 0)] + [raw[4]]
        return ".".join(f"{p:02X}" for p in parts)

    @property
    def mode(self) -> str:
        """The CC mode the report signs (FEATURE_FLAG); "legacy" when it has none."""
        flag = self.opaque.get(OPAQUE_FEATURE_FLAG)
        if flag is None:
            return "legacy"
        return _MODES.get(flag[0], "unknown") if len(flag) == 1 else "unknown"

    @classmethod
    def parse(cls, raw: bytes) -> GpuReport:
        try:
            return _parse(raw)
        except (struct.error, IndexError) as exc:
            raise VerificationError(Reason.MALFORMED, "truncated GPU report") from exc


def _parse(raw: bytes) -> GpuReport:
    if len(raw) > MAX_REPORT_SIZE:
        raise VerificationError(Reason.MALFORMED, "GPU report too large")
    request, resp = raw[:REQUEST_SIZE], raw[REQUEST_SIZE:]
    if len(request) != REQUEST_SIZE or request[0] != SPDM_1_1 or request[1] != GET_MEASUREMENTS:
        raise VerificationError(Reason.UNSUPPORTED, "not an SPDM 1.1 GET_MEASUREMENTS request")
    if resp[0] != SPDM_1_1 or resp[1] != MEASUREMENTS:
        raise VerificationError(Reason.UNSUPPORTED, "not an SPDM 1.1 MEASUREMENTS response")
    count = resp[4]
    length = int.from_bytes(resp[5:8], "little")
    record = resp[8:8 + length]
    off = 8 + length
    off += 32  # the responder's nonce
    (opaque_len,) = struct.unpack_from("<H", resp, off)
    opaque_raw = resp[off + 2:off + 2 + opaque_len]
    off += 2 + opaque_len
    signature = resp[off:]
    if len(record) != length or len(opaque_raw) != opaque_len or len(signature) != SIGNATURE_SIZE:
        raise VerificationError(Reason.MALFORMED, "GPU report fields do not add up")
    measurements = _blocks(record, count)
    return GpuReport(request[4:36], measurements, _tlvs(opaque_raw), raw[:-SIGNATURE_SIZE],
                     signature)


def _blocks(record: bytes, count: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    for _ in range(count):
        index = record[off]
        (size,) = struct.unpack_from("<H", record, off + 2)
        block = record[off + 4:off + 4 + size]
        if len(block) != size or size < 3:
            raise VerificationError(Reason.MALFORMED, "truncated measurement block")
        out[index] = block[3:]  # DMTF measurement: type(1) size(2) value
        off += 4 + size
    if off != len(record):
        raise VerificationError(Reason.MALFORMED, "measurement record length mismatch")
    return out


def _tlvs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off < len(data):
        kind, size = struct.unpack_from("<HH", data, off)
        out[kind] = data[off + 4:off + 4 + size]
        off += 4 + size
    if off != len(data):
        raise VerificationError(Reason.MALFORMED, "opaque data length mismatch")
    return out


def verify_gpu_report(
    raw: bytes, chain_pem: bytes, *, expected_nonce: bytes, trusted_roots: frozenset[str],
    now: dt.datetime,
) -> GpuReport:
    report = GpuReport.parse(raw)
    chain = load_pem_chain(chain_pem)
    verify_chain(chain, trusted_roots=trusted_roots, now=now)
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationError(Reason.UNSUPPORTED, "GPU attestation key is not P-384")
    sig = report.signature
    verify_ecdsa(key, int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"),
                 report.signed_bytes, hashes.SHA384(), what="GPU report signature")
    if report.request_nonce != expected_nonce:
        raise VerificationError(Reason.NONCE_MISMATCH, "GPU report answers another nonce")
    return report
