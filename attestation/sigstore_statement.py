"""Release statements signed with Sigstore instead of a release key: a Sigstore bundle
whose DSSE envelope holds the same in-toto statement (`attestation.statement`).

Verified offline: `sigstore`'s `Verifier` checks the signing certificate against the
Fulcio roots, the transparency-log inclusion proof against the Rekor keys and the
identity (the release workflow's certificate SAN and OIDC issuer) against the caller's
pins, all from a trusted root the caller names (a file, or the production root the
`sigstore` package ships), with no network.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from attestation.errors import Reason, VerificationError
from attestation.statement import PAYLOAD_TYPE, VerifiedStatement, checked_statement


def verify_sigstore_statement(bundle: bytes, *, identity: str, issuer: str,
                              trusted_root: Path | None, now: dt.datetime
                              ) -> VerifiedStatement:
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
    from sigstore.verify import Verifier, policy

    try:
        root = (TrustedRoot.from_file(str(trusted_root)) if trusted_root is not None
                else ClientTrustConfig.production(offline=True).trusted_root)
        verifier = Verifier(trusted_root=root)
        kind, payload = verifier.verify_dsse(
            Bundle.from_json(bundle), policy.Identity(identity=identity, issuer=issuer))
    except (SigstoreError, ValueError, KeyError, TypeError) as exc:
        raise VerificationError(Reason.STATEMENT_SIGNATURE,
                                f"the Sigstore bundle does not verify ({type(exc).__name__})"
                                ) from None
    if kind != PAYLOAD_TYPE:
        raise VerificationError(Reason.UNSUPPORTED, f"statement payload type {kind!r}")
    return checked_statement(payload, f"sigstore:{identity}", now=now)
