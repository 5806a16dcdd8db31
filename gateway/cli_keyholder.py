"""`cloister keyholder`: run a fleet's keyholder (`gateway.keyholder`), and the trust both
the keyholder and a joining gateway (`cloister serve --join`) check each other with.

Its workload manifest names the keyholder role and its settings (no models), so its own
digest goes into the reference values next to the gateways' (`--print-digest`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from attestation.verify import Policy, TrustRoots


def add_parser(sub: Any) -> None:
    keyholder = sub.add_parser("keyholder", help="hold a fleet's root seed and release it to "
                                                 "attested replicas")
    keyholder.add_argument("--host", default="127.0.0.1")
    keyholder.add_argument("--port", type=int, default=8100)
    keyholder.add_argument("--attestation", default="auto",
                           choices=["auto", "snp", "tdx", "simulated", "simulated-tdx"])
    keyholder.add_argument("--state-dir", type=Path, default=None)
    keyholder.add_argument("--reference-values", type=Path, action="append", default=[],
                           metavar="STATEMENT.json",
                           help="signed statements naming the workloads that get the seed")
    keyholder.add_argument("--release-key", type=Path, action="append", default=[],
                           help="the public keys those statements are signed with")
    keyholder.add_argument("--join", action="append", default=[], metavar="URL",
                           help="obtain the seed from this keyholder (high availability)")
    keyholder.add_argument("--simulated-host-data", default="auto", metavar="auto|none|HEX")
    keyholder.add_argument("--print-digest", action="store_true",
                           help="print this keyholder's workload digest and exit")


def keyholder_manifest(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.workload import build_manifest

    return build_manifest([], {"role": "keyholder", "attestation": args.attestation,
                               "joins_a_keyholder": bool(args.join)})


def fleet_trust(args: argparse.Namespace, state: Path) -> tuple[TrustRoots, Policy]:
    """The roots and reference values a fleet member checks the other side with: the
    statements given (`--reference-values`), signed by a `--release-key`."""
    from attestation.simulated import SimulatedPki
    from attestation.statement import load_public_keys, verify_statement

    keys: dict[str, Any] = {}
    for path in args.release_key:
        keys.update(load_public_keys(path.read_bytes()))
    roots = TrustRoots()
    if args.attestation.startswith("simulated"):
        roots = roots.with_simulated(SimulatedPki.load_or_create(state).roots_pem())
    now = dt.datetime.now(dt.UTC)
    values = tuple(verify_statement(path.read_bytes(), keys, now=now).values
                   for path in args.reference_values)
    if not values:
        raise SystemExit("a fleet member needs --reference-values (signed by --release-key) "
                         "naming the workloads it accepts")
    return roots, Policy(values)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from attestation.providers import ProviderError, select_providers
    from attestation.workload import workload_digest
    from enclave.logs import configure_logging
    from gateway.attestation_routes import Attested
    from gateway.cli_serve import _simulated_pin, _state_dir
    from gateway.collateral_fetch import FetchedCollateral
    from gateway.join import JoinRefused, obtain_seed
    from gateway.keyholder import Keyholder

    manifest = keyholder_manifest(args)
    digest = workload_digest(manifest)
    if args.print_digest:
        print(digest.hex())
        return 0
    configure_logging("info")
    state = _state_dir(args)
    try:
        sources = select_providers(args.attestation, state_dir=state,
                                   collateral=FetchedCollateral(state / "collateral"),
                                   simulated_launch_pin=_simulated_pin(args, digest))
    except ProviderError as exc:
        print(f"cloister keyholder: no attestation ({exc})", file=sys.stderr)
        return 2
    attested = Attested(sources.cpu, sources.gpu, sources.collateral, manifest)
    roots, policy = fleet_trust(args, state)
    if args.join:
        try:
            seed = asyncio.run(obtain_seed(args.join, attested, roots=roots, policy=policy))
        except JoinRefused as exc:
            print(f"cloister keyholder: {exc}", file=sys.stderr)
            return 2
    else:
        seed = os.urandom(32)
    keyholder = Keyholder(seed, attested, roots=roots, policy=policy)
    from gateway.http_protocol import listener_options

    uvicorn.run(keyholder.app(), host=args.host, port=args.port, log_config=None,
                access_log=False, **listener_options())
    return 0
