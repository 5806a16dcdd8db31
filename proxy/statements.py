"""Which of the release statements a gateway serves this client accepts: signed by a key
it trusts (or through Sigstore by the identity it names), unexpired, and not rolling
back a version it accepted before (`proxy.trust.StatementLog`)."""

from __future__ import annotations

import datetime as dt
import json

from attestation.errors import Reason, VerificationError
from attestation.sigstore_statement import verify_sigstore_statement
from attestation.statement import VerifiedStatement, verify_statement
from proxy.errors import GatewayNotAttested
from proxy.trust import StatementLog, Trust


def accepted_statements(served: object, trust: Trust, *, statements: StatementLog | None,
                        now: dt.datetime) -> list[tuple[int, VerifiedStatement]]:
    """The served statements (with their positions) a trusted key signed, unexpired and
    not rolled back; `GatewayNotAttested` with the first refusal's reason if none is."""
    accepted: list[tuple[int, VerifiedStatement]] = []
    refusals: list[VerificationError] = []
    for position, item in enumerate(served if isinstance(served, list) else []):
        try:
            verified = _verify_one(item, trust, now)
            if statements is not None:
                statements.check(verified)
        except VerificationError as err:
            refusals.append(err)
            continue
        accepted.append((position, verified))
    if accepted:
        return accepted
    if refusals:
        raise GatewayNotAttested(f"no acceptable release statement: {refusals[0]}")
    raise GatewayNotAttested(f"{Reason.NO_REFERENCE_VALUES.value}: the gateway serves no "
                             "release statement")


def _verify_one(item: object, trust: Trust, now: dt.datetime) -> VerifiedStatement:
    encoded = json.dumps(item).encode()
    if isinstance(item, dict) and "mediaType" in item and trust.sigstore is not None:
        sig = trust.sigstore
        return verify_sigstore_statement(encoded, identity=sig.identity, issuer=sig.issuer,
                                         trusted_root=sig.trusted_root, now=now)
    return verify_statement(encoded, trust.release_keys, now=now)
