"""The trust a fleet's members check each other with: the keyholder checks a joining
replica, a replica (or a joining keyholder) checks the keyholder. Both come from the
member's own measured configuration: the statements given (`--reference-values`), each
signed by one of the measured `--release-key`s."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from attestation.verify import Policy, TrustRoots
from gateway.config import Attestation, Fleet


class FleetTrustError(Exception):
    """A fleet member without usable reference values; the message says what to give."""


def fleet_trust(fleet: Fleet, attestation: Attestation, state: Path
                ) -> tuple[TrustRoots, Policy]:
    from attestation.errors import VerificationError
    from attestation.simulated import SimulatedPki
    from attestation.statement import load_public_keys, verify_statement

    keys: dict[str, Any] = {}
    for path in fleet.release_key:
        keys.update(load_public_keys(path.read_bytes()))
    roots = TrustRoots()
    if attestation.simulated:
        roots = roots.with_simulated(SimulatedPki.load_or_create(state).roots_pem())
    now = dt.datetime.now(dt.UTC)
    try:
        values = tuple(verify_statement(path.read_bytes(), keys, now=now).values
                       for path in attestation.reference_values)
    except VerificationError as exc:
        raise FleetTrustError(f"--reference-values: {exc}") from None
    if not values:
        raise FleetTrustError("a fleet member needs --reference-values (signed by "
                              "--release-key) naming the workloads it accepts")
    return roots, Policy(values)
