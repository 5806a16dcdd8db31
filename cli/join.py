"""Joining a fleet from the command line, for `cloister serve --join` and `cloister
keyholder --join`: the member's own trust (`gateway.fleet_trust`) lent to the client
side's join (`proxy.join`), which checks the keyholder with it."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Sequence

from attestation.errors import VerificationError
from gateway.fleet_trust import FleetTrust, FleetTrustError
from proxy.join import JoinRefused, Prove, obtain_seed
from proxy.trust import Trust

# What a join that does not happen raises; the message says why.
JOIN_ERRORS = (JoinRefused, FleetTrustError, VerificationError)


def join_fleet(fleet: FleetTrust, urls: Sequence[str], prove: Prove) -> bytes:
    """The fleet's seed from the first of `urls` whose keyholder verifies under this
    member's statements (as they stand now) and holds its trust anchors."""
    trust = Trust(fleet.roots, policy=fleet.policy(dt.datetime.now(dt.UTC)))
    return asyncio.run(obtain_seed(urls, prove, trust=trust,
                                   accept=functools.partial(fleet.check_peer, keyholder=True)))
