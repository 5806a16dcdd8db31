"""AMD's certificate revocation list for a chip family: is this ASK or VCEK revoked?

AMD's Key Distribution Service publishes one CRL per family
(`https://kdsintf.amd.com/vcek/v1/{Milan,Genoa,...}/crl`, DER), issued and signed
(RSA-PSS, SHA-384) by the family's ARK. The gateway carries it in its evidence
(`attestation.collateral`); a verifier checks it against the ARK it already pinned, that
it is current, and that neither the ASK nor the VCEK that signed the report is on it.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from attestation.errors import Reason, VerificationError


def check_not_revoked(crl_der: bytes, *, ark: x509.Certificate, ask: x509.Certificate,
                      vcek: x509.Certificate, now: dt.datetime) -> None:
    try:
        crl = x509.load_der_x509_crl(crl_der)
        signed = crl.issuer == ark.subject and crl.is_signature_valid(
            ark.public_key())  # type: ignore[arg-type]
    except ValueError:
        raise VerificationError(Reason.COLLATERAL_INVALID, "unreadable AMD CRL") from None
    if not signed:
        raise VerificationError(Reason.COLLATERAL_INVALID, "the AMD CRL is not signed by the ARK")
    next_update = crl.next_update_utc
    if not crl.last_update_utc <= now or next_update is None or now > next_update:
        raise VerificationError(Reason.COLLATERAL_STALE, "the AMD CRL is not current")
    for cert, what in ((ask, "ASK"), (vcek, "VCEK")):
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise VerificationError(Reason.REVOKED, f"AMD revoked this {what}")


def family(ark: x509.Certificate) -> str:
    """The chip family an ARK is for ("ARK-Milan" -> "Milan"): what KDS URLs name."""
    names = ark.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    if not name.startswith("ARK-"):
        raise VerificationError(Reason.UNSUPPORTED, f"not an AMD root: {name!r}")
    return name.removeprefix("ARK-")
