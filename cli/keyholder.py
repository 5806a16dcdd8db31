"""`cloister keyholder`: run a fleet's keyholder (`gateway.keyholder`).

Its workload manifest names the keyholder role and its measured settings (no models):
its release keys among them, so its own digest (`--print-digest`) goes into the
reference values next to the gateways'.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from cli.arguments import log_overridden
from cli.ports import busy_port_errors
from gateway.config import KeyholderConfig


def run(config: KeyholderConfig, *, print_digest: bool = False,
        overridden: Sequence[str] = ()) -> int:
    import uvicorn

    from attestation.providers import ProviderError, select_providers
    from attestation.workload import workload_digest
    from cli.join import JOIN_ERRORS, join_fleet
    from enclave.isolation import environment_refusal
    from enclave.logs import configure_logging
    from gateway.attestation_routes import Attested
    from gateway.collateral_fetch import FetchedCollateral
    from gateway.fleet_trust import fleet_trust
    from gateway.http_protocol import listener_options
    from gateway.keyholder import Keyholder, keyholder_manifest
    from gateway.keyholder_audit import open_audit

    busy = [] if print_digest else busy_port_errors([(config.listeners.host,
                                                       config.listeners.port, "--port")])
    if busy:
        print(f"cloister keyholder: {busy[0]}", file=sys.stderr)
        return 2
    refusal = environment_refusal(os.environ)
    if refusal is not None:
        print(f"cloister keyholder: refusing to start: {refusal}", file=sys.stderr)
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
        seed = (join_fleet(fleet, config.fleet.join, attested.prove) if config.fleet.join
                else os.urandom(32))
    except JOIN_ERRORS as exc:
        print(f"cloister keyholder: {exc}", file=sys.stderr)
        return 2
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    audit = open_audit(config.store.database, state, seed, fleet.statements)
    keyholder = Keyholder(seed, attested, trust=fleet, audit=audit)
    uvicorn.run(keyholder.app(), host=config.listeners.host, port=config.listeners.port,
                log_config=None, access_log=False, **listener_options())
    return 0
