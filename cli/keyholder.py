"""`cloister keyholder`: run a fleet's keyholder (`gateway.keyholder`).

Its workload manifest names the keyholder role and its measured settings (no models):
its release keys among them, so its own digest (`--print-digest`) goes into the
reference values next to the gateways'.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import sys
from collections.abc import Sequence

from cli.arguments import log_overridden
from gateway.config import KeyholderConfig


def run(config: KeyholderConfig, *, print_digest: bool = False,
        overridden: Sequence[str] = ()) -> int:
    import uvicorn

    from attestation.errors import VerificationError
    from attestation.providers import ProviderError, select_providers
    from attestation.workload import workload_digest
    from enclave.isolation import refused_variables
    from enclave.logs import configure_logging
    from gateway.attestation_routes import Attested
    from gateway.collateral_fetch import FetchedCollateral
    from gateway.fleet_trust import FleetTrustError, fleet_trust
    from gateway.http_protocol import listener_options
    from gateway.keyholder import Keyholder, keyholder_manifest
    from proxy.join import JoinRefused, obtain_seed
    from proxy.trust import Trust

    refused = refused_variables(os.environ)
    if refused:
        print(f"cloister keyholder: refusing to start: {', '.join(refused)} is set, and the "
              "environment is an allow-list (enclave/isolation.py); unset it", file=sys.stderr)
        return 2
    manifest = keyholder_manifest(config)
    digest = workload_digest(manifest)
    if print_digest:
        print(digest.hex())
        return 0
    configure_logging("info")
    log_overridden(overridden, "cloister.keyholder")
    state = config.store.folder()
    attestation = config.attestation
    try:
        sources = select_providers(
            attestation.attestation, state_dir=state,
            collateral=FetchedCollateral(state / "collateral"),
            simulated_launch_pin=attestation.simulated_pin(digest))
    except ProviderError as exc:
        print(f"cloister keyholder: no attestation ({exc})", file=sys.stderr)
        return 2
    attested = Attested(sources.cpu, sources.gpu, sources.collateral, manifest)
    try:
        fleet = fleet_trust(config.fleet, attestation, state)
        if config.fleet.join:
            seed = asyncio.run(obtain_seed(
                config.fleet.join, attested.prove,
                trust=Trust(fleet.roots, policy=fleet.policy(dt.datetime.now(dt.UTC))),
                accept=functools.partial(fleet.check_peer, keyholder=True)))
        else:
            seed = os.urandom(32)
    except (JoinRefused, FleetTrustError, VerificationError) as exc:
        print(f"cloister keyholder: {exc}", file=sys.stderr)
        return 2
    keyholder = Keyholder(seed, attested, trust=fleet)
    uvicorn.run(keyholder.app(), host=config.listeners.host, port=config.listeners.port,
                log_config=None, access_log=False, **listener_options())
    return 0
