"""`cloister serve`, `cloister workload`, and the commands that manage the gateway's
state for development (`apikey`, `chatbot`): what to serve is decided here (the launch,
the evidence, the fleet's seed); `gateway.serving` serves it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from cli.arguments import log_overridden
from cli.ports import busy_port_errors
from enclave.logs import configure_logging
from gateway.config import ServeConfig
from gateway.reaping import become_subreaper, stop_descendants
from gateway.serving import (
    OwnListeners,
    attestation_sources,
    attested_by,
    init_data,
    platform_store,
    serve_process,
)
from gateway.startup import Startup

if TYPE_CHECKING:
    from collections.abc import Sequence

    from attestation.types import CpuProvider
    from gateway.attestation_routes import Attested
    from gateway.launch import Launch
    from gateway.platform_store import PlatformStore


def simulated_roots(state: Path) -> None:
    """Write the simulated TEE's roots, with its release key, where clients are told to
    find them, and say loudly what this is."""
    from attestation.simulated import SimulatedPki
    from attestation.simulated import release as simulated_release
    from attestation.statement import public_pem

    roots = state / "simulated-roots.pem"
    key = simulated_release.release_key(state)
    roots.write_bytes(SimulatedPki.load_or_create(state).roots_pem()
                      + public_pem(key.public_key()))
    print("*" * 78 + "\nWARNING: SIMULATED ATTESTATION. The evidence is signed by a test PKI "
          "made on this\nmachine; it proves nothing about the hardware. Clients must name its "
          f"roots\n({roots}) to accept it. Development only.\n" + "*" * 78, file=sys.stderr)


def _simulated_statement(config: ServeConfig, launch: Launch) -> bytes:
    """The simulated TEE's statement over the default workload (the defaults of every
    option, on this simulated platform)."""
    import datetime as dt

    from attestation.simulated import release as simulated_release
    from gateway.launch import prepare

    defaults = ServeConfig.of(attestation=config.attestation.attestation)
    same = config.same_workload(defaults) and config.model == defaults.model
    default = launch if same else prepare(defaults)
    return simulated_release.statement(config.store.folder(), default.digest.hex(),
                                       now=dt.datetime.now(dt.UTC))


def _attested(config: ServeConfig, launch: Launch) -> Attested | str:
    """The evidence's sources, or why the gateway must not serve."""
    import json

    sources = attestation_sources(config, launch)
    if sources is None:
        return "no attestation"
    pinned = _check_launch_pin(sources.cpu, launch.digest, init_data(config))
    if pinned is None:
        return ("the host pinned another workload at launch (HOST_DATA / MRCONFIGID); this "
                f"one is {launch.digest.hex()}: refusing to serve")
    structlog.get_logger("cloister.cli").info(
        "workload", detail=launch.digest.hex(), reason="pinned at launch" if pinned
        else "not pinned at launch: clients that require pinning will refuse it")
    paths = config.attestation.reference_values
    statements = [path.read_bytes() for path in paths]
    for path, statement in zip(paths, statements, strict=True):
        try:
            json.loads(statement)
        except ValueError:
            return f"{path} is not a release statement (JSON)"
    if config.attestation.simulated:
        simulated_roots(config.store.folder())
        if not statements:
            statements.append(_simulated_statement(config, launch))
    return attested_by(sources, config, launch, tuple(statements))


def _check_launch_pin(cpu: CpuProvider, digest: bytes, init_data: bytes | None
                      ) -> bool | None:
    """Whether the host pinned this workload at launch (False: nothing pinned); None when
    it pinned another one, which refuses the start."""
    from attestation.errors import VerificationError
    from attestation.workload import check_launch_pin, launch_field_of

    own = cpu.get_report(bytes(64))
    try:
        return check_launch_pin(own.platform, launch_field_of(own), digest,
                                init_data=init_data)
    except VerificationError:
        return None


def _launch(config: ServeConfig, command: str) -> Launch | None:
    """The environment checked and the workload described; None (said why) if refused."""
    from gateway.launch import LaunchRefused, check_environment, prepare

    try:
        check_environment()
        return prepare(config)
    except LaunchRefused as exc:
        print(f"cloister {command}: {exc}", file=sys.stderr)
        return None


def run_workload(config: ServeConfig, *, digest_only: bool = False,
                 launch_pin: str | None = None) -> int:
    """Print the manifest and digest `serve` with this configuration would attest."""
    import json

    launch = _launch(config, "workload")
    if launch is None:
        return 2
    if launch_pin is not None:
        print(launch_pin_text(launch_pin, launch.digest), end="")
        return 0
    if not digest_only:
        print(json.dumps(launch.manifest, indent=2, sort_keys=True))
    print(launch.digest.hex())
    return 0


def launch_pin_text(kind: str, digest: bytes) -> str:
    """What a host sets at launch to pin `digest` (see deploy/README.md)."""
    import base64

    from attestation.workload import launch_value

    if kind == "init-data":
        from attestation.init_data import document

        return document(digest).decode()
    from attestation.platforms import platform_choice

    platform = platform_choice(kind).name
    return base64.b64encode(launch_value(digest, platform)).decode() + "\n"


def _account(store: PlatformStore, name: str) -> str:
    """Development: the account named `name` in the state folder, made if new."""
    for account in store.list_accounts():
        if name in (account.id, account.name):
            return account.id
    return store.create_account(name).id


def _local_store(config: ServeConfig, command: str) -> PlatformStore | None:
    """The store for the local admin commands (key files only); None, having said why,
    where the state is sealed to the serving workload."""
    from gateway.serving import StoreKeyRefused

    try:
        return platform_store(config)
    except StoreKeyRefused as exc:
        print(f"cloister {command}: {exc}", file=sys.stderr)
        return None


def run_apikey(config: ServeConfig, args: Any) -> int:
    """`args`: the subcommand's own arguments (action, name, account, ...)."""
    store = _local_store(config, "apikey")
    if store is None:
        return 2
    try:
        if args.action == "create":
            api_key, key = store.create_api_key(_account(store, args.account), args.name,
                                                budget_tokens=args.budget_tokens)
            print(f"{api_key}\n(id {key.id}; shown once: it is stored only as a hash)")
        elif args.action == "list":
            for key in store.list_api_keys():
                state = "revoked" if key.revoked else "active"
                print(f"{key.id}  {key.name}  {key.lookup}...  {state}  "
                      f"used {key.used_tokens} / budget {key.budget_tokens or 'none'}")
        elif args.action == "revoke":
            if not store.revoke_api_key(args.key_id):
                print(f"no active key with id {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
    finally:
        store.close()
    return 0


def run_chatbot(config: ServeConfig, args: Any) -> int:
    store = _local_store(config, "chatbot")
    if store is None:
        return 2
    try:
        bot = store.create_chatbot(_account(store, args.account), args.name, args.model,
                                   args.system_prompt, args.description)
        print(bot.id)
    finally:
        store.close()
    return 0


def serve(config: ServeConfig, *, overridden: Sequence[str] = ()) -> int:
    """Check, attest and serve `config`; the exit status. `overridden`: the `--config`
    entries a flag overrode, said in the start log."""
    from enclave.vllm_engine import open_vllm_engine
    from gateway.options import ConfigError

    try:
        config.check()
    except ConfigError as exc:
        print(f"cloister serve: {exc}", file=sys.stderr)
        return 2
    busy = busy_port_errors(listener_addresses(config))
    if busy:
        print("\n".join(f"cloister serve: {error}" for error in busy), file=sys.stderr)
        return 2
    configure_logging(config.metrics.log_level)
    log = structlog.get_logger("cloister.cli")
    log_overridden(overridden, "cloister.cli")
    startup = Startup()
    with startup.step("describing the workload (model digest, engine arguments)"):
        launch = _launch(config, "serve")
    if launch is None:
        return 2
    with startup.step("attestation (evidence sources, collateral)"):
        attested = _attested(config, launch)
    if isinstance(attested, str):
        print(f"cloister serve: {attested}", file=sys.stderr)
        return 2
    if config.limits.insecure_plaintext:
        log.warning("insecure_plaintext_enabled",
                    detail="plaintext prompts are accepted: development only")
    if config.listeners.tls and unsealable(config):
        print("cloister serve: this TEE has no firmware-derived sealing key; name one with "
              "--data-key file:PATH (on a measured, encrypted disk)", file=sys.stderr)
        return 2
    seed = None
    if config.fleet.join:
        from cli.join import JOIN_ERRORS, join_fleet
        from gateway.fleet_trust import fleet_trust

        started = time.monotonic()
        try:
            fleet = fleet_trust(config.fleet, config.attestation, config.store.folder())
            seed = join_fleet(fleet, config.fleet.join, attested.prove)
        except JOIN_ERRORS as exc:
            print(f"cloister serve: {exc}", file=sys.stderr)
            return 2
        log.info("joined_fleet", duration_ms=round((time.monotonic() - started) * 1000, 1))
    become_subreaper()  # what the engine starts comes back here if the engine dies
    try:
        if config.process.workers > 1:
            from gateway.workers import run_workers, warn_past_cores

            warn_past_cores(config.process.workers, os.cpu_count() or 1)
            return run_workers(config, launch, attested.statements, seed)
        return serve_process(config, launch, attested, seed,
                             lambda: open_vllm_engine(launch.generate, launch.embed),
                             listening=OwnListeners(), startup=startup)
    finally:
        stop_descendants()  # no process outlives the gateway


def listener_addresses(config: ServeConfig) -> list[tuple[str, int | None, str]]:
    """Every (host, port, its flag) `serve` with this configuration listens on."""
    listeners, metrics = config.listeners, config.metrics
    return [(listeners.host, listeners.port, "--port"),
            (listeners.host, listeners.tls_port if listeners.tls else None, "--tls-port"),
            (metrics.metrics_host, metrics.metrics_port, "--metrics-port")]


def unsealable(config: ServeConfig) -> bool:
    """Whether stored state would be sealed with a key the hardware does not protect:
    a real TEE without a firmware-derived key and no key file named."""
    from enclave.sealed_state import SEV_GUEST

    return (not config.attestation.simulated and config.store.data_key == "auto"
            and not os.path.exists(SEV_GUEST))
