"""The trust a fleet's members check each other with: the keyholder checks a joining
replica, a replica (or a joining keyholder) checks the keyholder.

Both come from the member's own measured configuration, its trust anchors: the release
keys (`--release-key`, measured by key id) and the lowest statement version it accepts
(`--min-statement-version`). The statements given (`--reference-values`) are verified
again at every join and every release, so one that expired since the start, or one below
the version floor, vouches for nobody. And the other side must hold the same anchors: a
genuine keyholder started with the operator's own release key (which would believe any
statement the operator signs) is refused by every replica, and refuses them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.errors import Reason, VerificationError
from attestation.statement import PublicKey, VerifiedStatement, verify_statement
from attestation.verify import Policy, TrustRoots, VerifiedEvidence
from gateway.config import Attestation, Fleet

ANCHORS = ("release_key_ids", "min_statement_version")
KEYHOLDER_ROLE = "keyholder"


class FleetTrustError(Exception):
    """A fleet member without usable reference values; the message says what to give."""


@dataclass(frozen=True)
class FleetTrust:
    roots: TrustRoots
    release_keys: Mapping[str, PublicKey]
    statements: tuple[bytes, ...]  # signed envelopes, verified at every use
    min_version: int = 0

    @property
    def anchors(self) -> dict[str, Any]:
        """What a peer's manifest settings must say, as this member's own do."""
        return {"release_key_ids": sorted(self.release_keys),
                "min_statement_version": self.min_version}

    def statements_now(self, now: dt.datetime) -> tuple[VerifiedStatement, ...]:
        """The statements that vouch at `now`; `VerificationError` (the first refusal's
        reason) when none does."""
        good: list[VerifiedStatement] = []
        refusal: VerificationError | None = None
        for envelope in self.statements:
            try:
                verified = verify_statement(envelope, self.release_keys, now=now)
                if verified.values.version < self.min_version:
                    raise VerificationError(
                        Reason.STATEMENT_ROLLBACK, f"version {verified.values.version} is "
                        f"below the measured minimum {self.min_version}")
            except VerificationError as exc:
                refusal = refusal or exc
                continue
            good.append(verified)
        if not good:
            raise refusal or VerificationError(Reason.NO_REFERENCE_VALUES, "no statements")
        return tuple(good)

    def policy(self, now: dt.datetime) -> Policy:
        return policy_of(self.statements_now(now))

    def check_peer(self, claims: VerifiedEvidence, *, keyholder: bool) -> None:
        """`VerificationError` unless the peer's manifest holds this member's anchors
        (and, for `keyholder`, names the keyholder role)."""
        settings = claims.workload.settings
        if keyholder and settings.get("role") != KEYHOLDER_ROLE:
            raise VerificationError(Reason.FLEET_ANCHORS, "the peer is not a keyholder")
        theirs = {name: settings.get(name) for name in ANCHORS}
        if theirs != self.anchors:
            raise VerificationError(Reason.FLEET_ANCHORS, "the peer trusts other release "
                                    "keys or another statement version floor")


def policy_of(statements: Sequence[VerifiedStatement]) -> Policy:
    """The policy these statements make (`FleetTrust.statements_now`'s)."""
    return Policy(tuple(s.values for s in statements))


def fleet_trust(fleet: Fleet, attestation: Attestation, state: Path,
                now: dt.datetime | None = None) -> FleetTrust:
    """This member's trust, checked once now so that a bad start says what to give."""
    from attestation.simulated import SimulatedPki
    from attestation.statement import load_public_keys

    keys: dict[str, Any] = {}
    for path in fleet.release_key:
        keys.update(load_public_keys(path.read_bytes()))
    roots = TrustRoots()
    if attestation.simulated:
        roots = roots.with_simulated(SimulatedPki.load_or_create(state).roots_pem())
    if not attestation.reference_values:
        raise FleetTrustError("a fleet member needs --reference-values (signed by "
                              "--release-key) naming the workloads it accepts")
    trust = FleetTrust(roots, keys, tuple(p.read_bytes() for p in attestation.reference_values),
                       fleet.min_statement_version)
    try:
        trust.statements_now(now or dt.datetime.now(dt.UTC))
    except VerificationError as exc:
        raise FleetTrustError(f"--reference-values: {exc}") from None
    return trust
