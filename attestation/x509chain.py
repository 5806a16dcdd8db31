"""Certificate chain checks shared by the SNP, TDX and GPU verifiers.

`cryptography` parses and verifies each signature (RSA-PSS for AMD, ECDSA for Intel and
NVIDIA); the walk is by hand because each vendor's chain has its own rules (AMD's
RSA-PSS roots, NVIDIA's leaf-first device chains) and the root is pinned by
fingerprint rather than taken from a system store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.errors import Reason, VerificationError


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def load_pem_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise VerificationError(Reason.MALFORMED, "unparseable certificate chain") from exc


def load_der(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise VerificationError(Reason.MALFORMED, "unparseable certificate") from exc


def check_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """`cert`'s signature verifies under `issuer`'s key (RSA-PSS, RSA PKCS#1 or ECDSA)."""
    try:
        _check_signed_by(cert, issuer)
    except ValueError:  # cryptography parses fields lazily: a damaged one raises here
        raise VerificationError(Reason.MALFORMED, "damaged certificate") from None


def _check_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    if cert.issuer != issuer.subject:
        raise VerificationError(Reason.BAD_CHAIN, f"{_cn(cert)} is not issued by {_cn(issuer)}")
    key = issuer.public_key()
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:
        raise VerificationError(Reason.UNSUPPORTED, "certificate signature without a hash")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            params = cert.signature_algorithm_parameters
            pad = params if isinstance(params, padding.PSS | padding.PKCS1v15) else (
                padding.PKCS1v15())
            key.verify(cert.signature, cert.tbs_certificate_bytes, pad, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            raise VerificationError(Reason.UNSUPPORTED, "unsupported issuer key type")
    except InvalidSignature:
        raise VerificationError(Reason.BAD_CHAIN,
                                f"signature of {_cn(cert)} does not verify") from None


def check_valid_at(cert: x509.Certificate, now: dt.datetime) -> None:
    try:
        valid = cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    except ValueError:
        raise VerificationError(Reason.MALFORMED, "damaged certificate") from None
    if not valid:
        raise VerificationError(Reason.CERT_EXPIRED, f"{_cn(cert)} is not valid at {now:%Y-%m-%d}")


def verify_chain(chain: Sequence[x509.Certificate], *, trusted_roots: frozenset[str],
                 now: dt.datetime) -> None:
    """`chain` is leaf first and ends at a self-signed root pinned in `trusted_roots`."""
    if not chain:
        raise VerificationError(Reason.BAD_CHAIN, "empty certificate chain")
    root = chain[-1]
    try:
        pinned = fingerprint(root) in trusted_roots
    except ValueError:
        raise VerificationError(Reason.MALFORMED, "damaged certificate") from None
    if not pinned:
        raise VerificationError(Reason.UNTRUSTED_ROOT, f"root {_cn(root)} is not pinned")
    check_signed_by(root, root)
    for cert, issuer in zip(chain, chain[1:], strict=False):
        check_signed_by(cert, issuer)
    for cert in chain:
        check_valid_at(cert, now)


def verify_ecdsa(key: object, r: int, s: int, data: bytes, algorithm: hashes.HashAlgorithm,
                 *, what: str) -> None:
    """An ECDSA signature given as the integers (r, s), as hardware reports carry it."""
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError(Reason.UNSUPPORTED, f"{what}: not an ECDSA key")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise VerificationError(Reason.BAD_SIGNATURE, what) from None


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()
