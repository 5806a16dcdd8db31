"""Intel TDX DCAP quotes, versions 4 and 5: parse and verify.

Layout: Intel TDX DCAP Quote Generation Library and Quote Verification Library API,
appendix A (quote format).
    v4: header(48) td_report_body(584) sig_data_len(u32) sig_data
    v5: header(48) body_type(u16) body_size(u32) body(584 TDX 1.0 | 648 TDX 1.5)
        sig_data_len(u32) sig_data
    sig_data: quote_signature(64, r||s BE) attestation_key(64, X||Y)
              cert_data: type(u16) size(u32) data
    cert type 6 (QE report certification data): qe_report(384) qe_report_signature(64)
              qe_auth_size(u16) qe_auth_data  cert_data (type 5: PEM PCK chain)
The quote signature (ECDSA P-256, SHA-256) covers everything before sig_data_len; the QE
report is signed by the PCK leaf; QE report_data[0:32] = SHA-256(attestation_key ||
qe_auth_data); the PCK chain ends at the pinned Intel SGX Root CA. The QE's identity
and the TCB status need Intel's collateral: `attestation.dcap`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.errors import Reason, VerificationError
from attestation.x509chain import load_pem_chain, verify_chain, verify_ecdsa

HEADER_SIZE = 48
TEE_TYPE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
BODY_SIZES = {2: 584, 3: 648}  # v5 body types: TDX 1.0, TDX 1.5
QE_REPORT_SIZE = 384
CERT_QE_REPORT = 6
CERT_PCK_CHAIN = 5
# Real quotes are a few KiB; anything near this is not a quote.
MAX_QUOTE_SIZE = 64 * 1024


@dataclass(frozen=True)
class TdReport:
    tee_tcb_svn: bytes
    mr_seam: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & 0x01)  # TUD.DEBUG

    @classmethod
    def parse(cls, body: bytes) -> TdReport:
        f = [body[o:o + n] for o, n in _BODY_FIELDS]
        return cls(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], (f[8], f[9], f[10], f[11]),
                   f[12])


# (offset, size) of the TD report body fields used above.
_BODY_FIELDS = [(0, 16), (16, 48), (120, 8), (128, 8), (136, 48), (184, 48), (232, 48),
                (280, 48), (328, 48), (376, 48), (424, 48), (472, 48), (520, 64)]


@dataclass(frozen=True)
class TdxQuote:
    version: int
    td: TdReport
    signed_bytes: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes

    @classmethod
    def parse(cls, raw: bytes) -> TdxQuote:
        try:
            return _parse(raw)
        except (struct.error, IndexError) as exc:
            raise VerificationError(Reason.MALFORMED, "truncated TDX quote") from exc


def _parse(raw: bytes) -> TdxQuote:
    if len(raw) > MAX_QUOTE_SIZE:
        raise VerificationError(Reason.MALFORMED, "TDX quote too large")
    version, key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
    if version not in (4, 5):
        raise VerificationError(Reason.UNSUPPORTED, f"TDX quote version {version}")
    if key_type != ATT_KEY_ECDSA_P256 or tee_type != TEE_TYPE_TDX:
        raise VerificationError(Reason.UNSUPPORTED, "not an ECDSA-P256 TDX quote")
    off = HEADER_SIZE
    body_size = 584
    if version == 5:
        body_type, body_size = struct.unpack_from("<HI", raw, off)
        if BODY_SIZES.get(body_type) != body_size:
            raise VerificationError(Reason.UNSUPPORTED, f"TDX v5 body type {body_type}")
        off += 6
    body = raw[off:off + body_size]
    off += body_size
    if len(body) != body_size:
        raise VerificationError(Reason.MALFORMED, "truncated TDX quote")
    signed = raw[:off]
    (sig_len,) = struct.unpack_from("<I", raw, off)
    sig = raw[off + 4:off + 4 + sig_len]
    if len(sig) != sig_len:
        raise VerificationError(Reason.MALFORMED, "truncated TDX signature data")
    signature, att_key = sig[:64], sig[64:128]
    cert_type, cert_size = struct.unpack_from("<HI", sig, 128)
    cert = sig[134:134 + cert_size]
    if cert_type != CERT_QE_REPORT or len(cert) != cert_size:
        raise VerificationError(Reason.UNSUPPORTED, f"TDX certification data type {cert_type}")
    qe_report, qe_sig = cert[:QE_REPORT_SIZE], cert[QE_REPORT_SIZE:QE_REPORT_SIZE + 64]
    pos = QE_REPORT_SIZE + 64
    (auth_size,) = struct.unpack_from("<H", cert, pos)
    auth = cert[pos + 2:pos + 2 + auth_size]
    pos += 2 + auth_size
    inner_type, inner_size = struct.unpack_from("<HI", cert, pos)
    chain = cert[pos + 6:pos + 6 + inner_size]
    if inner_type != CERT_PCK_CHAIN or len(chain) != inner_size:
        raise VerificationError(Reason.UNSUPPORTED, "TDX quote without a PCK chain")
    return TdxQuote(version, TdReport.parse(body), signed, signature, att_key, qe_report,
                    qe_sig, auth, chain)


def looks_like_quote(raw: bytes) -> bool:
    """Whether `raw` starts like a TDX ECDSA quote (version 4 or 5, key type 2, TDX)."""
    if len(raw) < HEADER_SIZE:
        return False
    version, key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
    return version in (4, 5) and key_type == ATT_KEY_ECDSA_P256 and tee_type == TEE_TYPE_TDX


def _p256(point: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + point)
    except ValueError:
        raise VerificationError(Reason.MALFORMED, "invalid attestation key") from None


def _verify_raw(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes, what: str) -> None:
    """Intel's raw P-256 signature: r || s, 32 bytes each, big-endian."""
    verify_ecdsa(key, int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"), data,
                 hashes.SHA256(), what=what)


def verify_tdx_quote(raw: bytes, *, trusted_roots: frozenset[str], now: dt.datetime) -> TdxQuote:
    """Signature chain of a TDX quote up to the pinned Intel SGX Root CA."""
    quote = TdxQuote.parse(raw)
    chain = load_pem_chain(quote.pck_chain_pem)
    verify_chain(chain, trusted_roots=trusted_roots, now=now)
    check_qe_report(quote, chain[0])
    check_attestation_key_bound(quote)
    check_quote_signature(quote)
    return quote


def check_qe_report(quote: TdxQuote, pck_leaf: x509.Certificate) -> None:
    """The QE report is signed by the platform's PCK."""
    pck = pck_leaf.public_key()
    if not isinstance(pck, ec.EllipticCurvePublicKey):
        raise VerificationError(Reason.UNSUPPORTED, "PCK is not an ECDSA key")
    _verify_raw(pck, quote.qe_report_signature, quote.qe_report, "QE report signature")


def check_attestation_key_bound(quote: TdxQuote) -> None:
    """QE report_data[0:32] = SHA-256(attestation key || QE auth data)."""
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    if quote.qe_report[320:352] != expected:
        raise VerificationError(Reason.QE_MISMATCH, "QE report does not bind the attestation key")


def check_quote_signature(quote: TdxQuote) -> None:
    _verify_raw(_p256(quote.attestation_key), quote.signature, quote.signed_bytes,
                "TDX quote signature")

