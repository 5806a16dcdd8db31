"""Revocation of a GPU's certificate chain by OCSP (RFC 6960), the way NVIDIA publishes
it (`ocsp.ndis.nvidia.com`): one response per certificate below the root, fetched by the
gateway and carried in the evidence's collateral like AMD's CRL, so that clients check
revocation offline (`attestation.collateral`).

A response counts when it answers for this certificate (serial and issuer), says GOOD, is
current (`this_update` not in the future, `next_update` not past; without a next update it
is current for `MAX_AGE`), and is signed by the certificate's issuer or by a responder
that issuer delegated to (`id-kp-OCSPSigning`), which the chain's pinned root thereby
vouches for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from attestation.errors import Reason, VerificationError

HASH = hashes.SHA384()  # the certificate-id hash NVIDIA's verifier asks with
MAX_AGE = dt.timedelta(days=7)
CLOCK_SKEW = dt.timedelta(minutes=5)


def request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """The DER OCSP request for `cert` (POSTed as application/ocsp-request)."""
    built = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, HASH).build()
    return built.public_bytes(Encoding.DER)


def check_chain(chain: Sequence[x509.Certificate], responses: Sequence[bytes], *,
                now: dt.datetime) -> None:
    """Every certificate of `chain` (leaf first, root last, already verified to a pinned
    root) but the root has a current GOOD response among `responses`."""
    parsed = [_load(raw) for raw in responses]
    for cert, issuer in zip(chain, chain[1:], strict=False):
        answer = next((r for r in parsed if _answers(r, cert, issuer)), None)
        if answer is None:
            raise VerificationError(Reason.COLLATERAL_MISSING, "no OCSP response for the GPU "
                                    f"certificate {cert.subject.rfc4514_string()!r}")
        _check(answer, issuer, now)


def next_update(responses: Sequence[bytes]) -> dt.datetime | None:
    """When the first of `responses` stops being current (None: none, or unreadable)."""
    try:
        times = [r.next_update_utc or r.this_update_utc + MAX_AGE
                 for r in (_load(raw) for raw in responses)]
    except VerificationError:
        return None
    return min(times) if times else None


def _load(raw: bytes) -> ocsp.OCSPResponse:
    try:
        response = ocsp.load_der_ocsp_response(raw)
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise VerificationError(Reason.COLLATERAL_INVALID, "an unsuccessful OCSP response")
        response.tbs_response_bytes  # noqa: B018  (raises on a malformed body)
    except ValueError:
        raise VerificationError(Reason.MALFORMED, "malformed OCSP response") from None
    return response


def _answers(response: ocsp.OCSPResponse, cert: x509.Certificate,
             issuer: x509.Certificate) -> bool:
    single_algorithm = response.hash_algorithm
    asked = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, single_algorithm).build()
    return (response.serial_number == cert.serial_number
            and response.issuer_key_hash == asked.issuer_key_hash
            and response.issuer_name_hash == asked.issuer_name_hash)


def _check(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime) -> None:
    signer = _signer(response, issuer, now)
    try:
        _verify_signature(signer.public_key(), response)
    except (InvalidSignature, ValueError, TypeError):
        raise VerificationError(Reason.BAD_SIGNATURE, "an OCSP response's signature is "
                                "not its issuer's") from None
    if response.this_update_utc > now + CLOCK_SKEW:
        raise VerificationError(Reason.COLLATERAL_INVALID, "an OCSP response from the future")
    until = response.next_update_utc or response.this_update_utc + MAX_AGE
    if until < now:
        raise VerificationError(Reason.COLLATERAL_STALE, "an OCSP response is out of date")
    if response.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        raise VerificationError(Reason.REVOKED, "a GPU certificate is revoked (OCSP)")
    if response.certificate_status != ocsp.OCSPCertStatus.GOOD:
        raise VerificationError(Reason.COLLATERAL_INVALID, "NVIDIA's responder does not know "
                                "a GPU certificate")


def _signer(response: ocsp.OCSPResponse, issuer: x509.Certificate,
            now: dt.datetime) -> x509.Certificate:
    """A responder certificate in the response that the issuer delegated to, else the
    issuer itself (whose key must then have signed)."""
    for responder in response.certificates:
        try:
            responder.verify_directly_issued_by(issuer)
            usage = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if (ExtendedKeyUsageOID.OCSP_SIGNING in usage
                and responder.not_valid_before_utc <= now <= responder.not_valid_after_utc):
            return responder
    return issuer


def _verify_signature(key: object, response: ocsp.OCSPResponse) -> None:
    algorithm = response.signature_hash_algorithm
    if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
        key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                   algorithm)
    else:
        raise TypeError("an unsupported OCSP signature")
