"""TDX TCB evaluation against Intel's collateral, by `dcap-qvl` (Phala's port of Intel's
quote verification library).

dcap-qvl checks the TCB info and QE identity signatures and their issuer chains up to
the root, their issue and next-update dates, the PCK chain against the root and both
CRLs, the QE report against the QE identity (MRSIGNER, ISVPRODID, and MISCSELECT and
ATTRIBUTES under their masks: a debug QE fails there), and finds the TCB level of the
platform (PCK SVNs, TEE_TCB_SVN) and of the QE. Done here first, because dcap-qvl does
not: the PCK CRL's own issuer chain (carried, unused by it), and which certificate a CRL
revokes (dcap-qvl reports a revoked PCK as a chain failure), so a revoked PCK or PCK CA
gets its own reason. Its other failures are sorted into reasons by their message.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.errors import Reason, VerificationError
from attestation.x509chain import fingerprint, load_pem_chain, verify_chain

# Intel's TCB statuses, best first (Intel PCS API, TCB info v3).
TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
                "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded",
                "Revoked")


@dataclass(frozen=True)
class TcbVerdict:
    status: str
    advisory_ids: tuple[str, ...]
    qe_status: str


def evaluate(raw_quote: bytes, collateral: dict[str, str], *,
             pck_chain: list[x509.Certificate], now: dt.datetime) -> TcbVerdict:
    """The TCB verdict for a quote whose PCK chain (leaf, CA, root) already verified."""
    if len(pck_chain) != 3:
        raise VerificationError(Reason.BAD_CHAIN, "a PCK chain is leaf, CA and root")
    check_revocation(collateral, pck_chain, now)
    return tcb_verdict(raw_quote, collateral, pck_chain[-1], now)


def tcb_verdict(raw_quote: bytes, collateral: dict[str, str], root: x509.Certificate,
                now: dt.datetime) -> TcbVerdict:
    """dcap-qvl's evaluation of the TCB info and QE identity (revocation checked first)."""
    claims = _dcap_claims(raw_quote, collateral, root, now)
    try:
        tcb, qe_level = claims["tcb"], claims["qe"]["tcb_level"]
        return TcbVerdict(str(tcb["status"]), tuple(str(a) for a in tcb["advisory_ids"]),
                          str(qe_level["tcbStatus"]))
    except (KeyError, TypeError):
        raise VerificationError(Reason.COLLATERAL_INVALID, "unexpected dcap-qvl claims") from None


def _invalid(what: str) -> VerificationError:
    return VerificationError(Reason.COLLATERAL_INVALID, what)


def _crl(collateral: dict[str, str], name: str) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(bytes.fromhex(collateral[name]))
    except (KeyError, ValueError):
        raise _invalid(f"{name} is missing or unreadable") from None


def check_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, name: str,
               now: dt.datetime) -> None:
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise _invalid(f"{name} is not signed by {issuer.subject.rfc4514_string()}")
    next_update = crl.next_update_utc
    if not crl.last_update_utc <= now or next_update is None or now > next_update:
        raise VerificationError(Reason.COLLATERAL_STALE, f"{name} is not current")


def check_revocation(collateral: dict[str, str], pck_chain: list[x509.Certificate],
                     now: dt.datetime) -> None:
    leaf, ca, root = pck_chain
    try:
        issuers = load_pem_chain(collateral["pck_crl_issuer_chain"].encode())
        verify_chain(issuers, trusted_roots=frozenset({fingerprint(root)}), now=now)
    except KeyError:
        raise _invalid("pck_crl_issuer_chain is missing") from None
    except VerificationError as exc:
        raise _invalid(f"pck_crl_issuer_chain: {exc.detail}") from None
    if issuers[0].public_bytes(Encoding.DER) != ca.public_bytes(Encoding.DER):
        raise _invalid("the PCK CRL is for another PCK CA")
    pck_crl, root_crl = _crl(collateral, "pck_crl"), _crl(collateral, "root_ca_crl")
    check_crl(pck_crl, ca, "pck_crl", now)
    check_crl(root_crl, root, "root_ca_crl", now)
    if pck_crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
        raise VerificationError(Reason.REVOKED, "Intel revoked this platform's PCK certificate")
    if root_crl.get_revoked_certificate_by_serial_number(ca.serial_number) is not None:
        raise VerificationError(Reason.REVOKED, "Intel revoked the PCK CA")


def _reason(message: str) -> Reason:
    lowered = message.lower()
    if lowered.startswith("qe "):  # "QE MRSIGNER mismatch", "QE report validation failed"
        return Reason.QE_IDENTITY
    if "debug" in lowered:  # "Debug mode is enabled": a debuggable TD
        return Reason.DEBUG
    if "sept_ve_disable" in lowered:  # "SEPT_VE_DISABLE is not enabled"
        return Reason.TD_ATTRIBUTES
    if any(w in lowered for w in ("expired", "in the future", "not yet valid")):
        return Reason.COLLATERAL_STALE
    if "revoked" in lowered:
        return Reason.REVOKED
    return Reason.COLLATERAL_INVALID


def _dcap_claims(raw_quote: bytes, collateral: dict[str, str], root: x509.Certificate,
                 now: dt.datetime) -> dict[str, Any]:
    import dcap_qvl

    stamp = int(now.timestamp())
    try:
        parsed = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(collateral))
        verifier = dcap_qvl.QuoteVerifier(root.public_bytes(Encoding.DER))
        claims = verifier.verify_with_policy(raw_quote, parsed, stamp,
                                             dcap_qvl.QuotePolicy.claims_only(stamp))
        result: dict[str, Any] = json.loads(claims.to_json())
        return result
    except ValueError as exc:
        message = str(exc).removeprefix("Verification failed: ")[:200]
        raise VerificationError(_reason(message), f"Intel collateral: {message}") from None
