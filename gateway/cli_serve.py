"""`cloister serve`, `cloister workload`, and the commands that manage the gateway's
state for development (`apikey`, `chatbot`)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from enclave.logs import configure_logging
from gateway.config import ServeConfig
from gateway.http_protocol import listener_options

if TYPE_CHECKING:  # these import vLLM, SQLAlchemy or model-signing: loaded when used
    from collections.abc import Sequence

    import uvicorn

    from attestation.providers import Sources
    from attestation.types import CpuProvider
    from enclave.fleet import FleetSecrets
    from gateway.attestation_routes import Attested
    from gateway.engine_slot import EngineFactory
    from gateway.launch import Launch
    from gateway.platform_store import PlatformStore
    from gateway.replay_store import SqlReplayCache
    from gateway.workers import WorkerListeners

# After the engine dies: how long `/health` and `/ready` answer 503 before the exit.
FAILURE_DRAIN_SECONDS = 3.0


def _attestation(config: ServeConfig, launch: Launch) -> Sources | None:
    from attestation.providers import ProviderError, select_providers
    from attestation.workload import WorkloadClaims
    from gateway.collateral_fetch import AMD_KDS_URL, INTEL_PCS_URL, FetchedCollateral

    uses_gpu = WorkloadClaims.parse(launch.manifest, pinned_at_launch=False).uses_gpu
    attestation, state = config.attestation, config.store.folder()
    fetched = FetchedCollateral(state / "collateral",
                                pccs_url=attestation.pccs_url or INTEL_PCS_URL,
                                kds_url=attestation.amd_kds_url or AMD_KDS_URL)
    try:
        return select_providers(attestation.attestation, state_dir=state,
                                collateral=fetched,
                                simulated_launch_pin=attestation.simulated_pin(launch.digest),
                                gpu_required=uses_gpu)
    except ProviderError as exc:
        print(f"cloister serve: no attestation ({exc}). On a machine without confidential "
              "hardware, pass --attestation simulated (development only).", file=sys.stderr)
        return None


def simulated_roots(state: Path) -> None:
    """Write the simulated TEE's roots, with its release key, where clients are told to
    find them, and say loudly what this is."""
    from attestation import simulated_release
    from attestation.simulated import SimulatedPki
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

    from attestation import simulated_release
    from gateway.launch import prepare

    defaults = ServeConfig.of(attestation=config.attestation.attestation)
    same = config.same_workload(defaults) and config.model == defaults.model
    default = launch if same else prepare(defaults)
    return simulated_release.statement(config.store.folder(), default.digest.hex(),
                                       now=dt.datetime.now(dt.UTC))


def _attested(config: ServeConfig, launch: Launch) -> Attested | str:
    """The evidence's sources, or why the gateway must not serve."""
    import json

    sources = _attestation(config, launch)
    if sources is None:
        return "no attestation"
    init_data = _init_data(config)
    pinned = _check_launch_pin(sources.cpu, launch.digest, init_data)
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
    if config.simulated:
        simulated_roots(config.store.folder())
        if not statements:
            statements.append(_simulated_statement(config, launch))
    return _attested_by(sources, config, launch, tuple(statements))


def _init_data(config: ServeConfig) -> bytes | None:
    path = config.attestation.launch_init_data
    return path.read_bytes() if path else None


def _attested_by(sources: Sources, config: ServeConfig, launch: Launch,
                 statements: tuple[bytes, ...]) -> Attested:
    from gateway.attestation_routes import Attested

    return Attested(sources.cpu, sources.gpu, sources.collateral, launch.manifest,
                    _init_data(config), statements)


def attested_worker(config: ServeConfig, launch: Launch,
                    statements: tuple[bytes, ...]) -> Attested | None:
    """A worker process's own evidence sources, for what its parent checked and chose
    (`_attested`): the same workload and reference values."""
    sources = _attestation(config, launch)
    return None if sources is None else _attested_by(sources, config, launch, statements)


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


def run_workload(config: ServeConfig, *, digest_only: bool = False,
                 launch_pin: str | None = None) -> int:
    """Print the manifest and digest `serve` with this configuration would attest."""
    import json

    from gateway.launch import LaunchRefused, check_environment, prepare

    try:
        check_environment()
        launch = prepare(config)
    except LaunchRefused as exc:
        print(f"cloister workload: {exc}", file=sys.stderr)
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
        return ('version = "0.1.0"\nalgorithm = "sha256"\n[data]\n'
                f'"cloister.toml" = \'workload_digest = "{digest.hex()}"\'\n')
    platform = "sev-snp" if kind == "snp" else "tdx"
    return base64.b64encode(launch_value(digest, platform)).decode() + "\n"


def platform_store(config: ServeConfig, fleet: FleetSecrets | None = None) -> PlatformStore:
    """The platform's store, sealed with the fleet's data key when the gateway is a
    fleet replica (every replica reads what any other wrote)."""
    from enclave.sealed_state import SEV_GUEST, DataKey
    from gateway.platform_store import PlatformStore

    state = config.store.folder()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = config.store.database or f"sqlite:///{state / 'platform-v2.db'}"
    if fleet is not None:
        return PlatformStore(url, DataKey(fleet.derive("data-key")))
    choice = config.store.data_key
    if choice == "auto":
        choice = "snp" if os.path.exists(SEV_GUEST) else f"file:{state / 'data-key'}"
    key = DataKey.from_snp() if choice == "snp" else DataKey.from_key_file(
        Path(choice.removeprefix("file:")))
    return PlatformStore(url, key)


def _admin_key(path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(path.read_bytes())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SystemExit("cloister serve: --admin-public-key must be an Ed25519 public key "
                         "(`cloister admin keygen`)")
    return key


def _account(store: PlatformStore, name: str) -> str:
    """Development: the account named `name` in the state folder, made if new."""
    for account in store.list_accounts():
        if name in (account.id, account.name):
            return account.id
    return store.create_account(name).id


def run_apikey(config: ServeConfig, args: Any) -> int:
    """`args`: the subcommand's own arguments (action, name, account, ...)."""
    store = platform_store(config)
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
    store = platform_store(config)
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
    from gateway.launch import LaunchRefused, check_environment, prepare
    from gateway.options import ConfigError

    try:
        config.check()
    except ConfigError as exc:
        print(f"cloister serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.metrics.log_level)
    log = structlog.get_logger("cloister.cli")
    for each in overridden:
        log.info("config_overridden", detail=each, reason="the flag wins over --config")
    try:
        check_environment()
        launch = prepare(config)
    except LaunchRefused as exc:
        print(f"cloister serve: {exc}", file=sys.stderr)
        return 2
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
        from gateway.fleet_trust import FleetTrustError, fleet_trust
        from gateway.join import JoinRefused, obtain_seed

        started = time.monotonic()
        try:
            roots, policy = fleet_trust(config.fleet, config.attestation, config.store.folder())
            seed = asyncio.run(obtain_seed(config.fleet.join, attested, roots=roots,
                                           policy=policy))
        except (JoinRefused, FleetTrustError) as exc:
            print(f"cloister serve: {exc}", file=sys.stderr)
            return 2
        log.info("joined_fleet", duration_ms=round((time.monotonic() - started) * 1000, 1))
    if config.process.workers > 1:
        from gateway.workers import run_workers

        return run_workers(config, launch, attested.statements, seed)
    return serve_process(config, launch, attested, seed,
                         lambda: open_vllm_engine(launch.generate, launch.embed),
                         listening=OwnListeners())


class OwnListeners:
    """How a gateway that is one process listens: uvicorn binds each listener and
    handles the signals itself; nothing is shared with other processes. (The other way:
    `gateway.workers.WorkerListeners`.)"""

    main: socket.socket | None = None
    tls: socket.socket | None = None
    metrics: socket.socket | None = None

    def server(self, config: uvicorn.Config, *, main: bool = False) -> uvicorn.Server:
        import uvicorn

        return uvicorn.Server(config)

    def stop_on_signals(self, servers: Sequence[uvicorn.Server]) -> None:
        """Nothing to add: uvicorn's own handlers stop the main listener."""

    def shared_replay_cache(self) -> SqlReplayCache | None:
        return None


def unsealable(config: ServeConfig) -> bool:
    """Whether stored state would be sealed with a key the hardware does not protect:
    a real TEE without a firmware-derived key and no key file named."""
    from enclave.sealed_state import SEV_GUEST

    return (not config.simulated and config.store.data_key == "auto"
            and not os.path.exists(SEV_GUEST))


def serve_process(config: ServeConfig, launch: Launch, attested: Attested,
                  seed: bytes | None, engine: EngineFactory, *,
                  listening: OwnListeners | WorkerListeners) -> int:
    """Serve in this process until told to stop; the exit status. `seed`: the fleet's
    (or this gateway's workers') root secret, whence every key; `listening`: how this
    process listens, alone or as one of `--workers` (`gateway.workers`)."""
    import uvicorn

    from gateway.app import create_app

    log = structlog.get_logger("cloister.cli")
    failed = False

    def on_engine_failure() -> None:
        """The engine died: `/health` and `/ready` answer 503 `engine_failed` for a short
        drain (probes and balancers see it; streams in flight get their sealed error),
        then the process exits non-zero so its supervisor restarts it."""
        nonlocal failed
        failed = True
        asyncio.get_running_loop().call_later(FAILURE_DRAIN_SECONDS,
                                              setattr, server, "should_exit", True)

    fleet = None
    if seed is not None:
        from enclave.fleet import FleetSecrets

        fleet = FleetSecrets(seed)
    tls = None
    store = None
    listen = config.listeners
    if listen.tls:
        from gateway.tls import make_tls_identity

        tls = make_tls_identity(list(listen.tls_host) or [listen.host, "localhost"],
                                fleet_secret=fleet.derive("tls-p256") if fleet else None)
        # The stored state outlives this run: sealed with the fleet's key in a fleet, with
        # the TEE's (or the named file's) otherwise, never with a seed made for this run.
        store = platform_store(config, fleet if config.fleet.join else None)
    admin = None
    if store is not None and config.admin.admin_public_key is not None:
        from gateway.admin import AdminApi

        admin = AdminApi(store, _admin_key(config.admin.admin_public_key))
    replay_cache = listening.shared_replay_cache()  # this gateway's workers'
    if replay_cache is None and fleet is not None and config.store.database is not None:
        from gateway.replay_store import SqlReplayCache

        replay_cache = SqlReplayCache(config.store.database)  # shared by the fleet's replicas
    app = create_app(config, engine, on_engine_failure=on_engine_failure,
                     attestation=attested, platform_store=store, admin=admin,
                     tls_spki_sha256=tls.spki_sha256 if tls is not None else None,
                     fleet=fleet, replay_cache=replay_cache)
    # Proxy headers (X-Forwarded-For/-Proto) only from a front the operator names.
    forwarded: dict[str, Any] = {"proxy_headers": listen.forwarded_allow_ips is not None,
                                 "forwarded_allow_ips": listen.forwarded_allow_ips}
    # every listener: see gateway.http_protocol
    bounded = listener_options(config.timeouts.head_timeout)
    grace = int(config.timeouts.shutdown_grace)
    main = uvicorn.Config(app, host=listen.host, port=listen.port, log_config=None,
                          access_log=False, lifespan="on", **bounded,
                          timeout_graceful_shutdown=grace, **forwarded)
    server = listening.server(main, main=True)
    listeners = [(server, listening.main)]
    if tls is not None:
        with tls.files() as (certfile, keyfile):  # in memory, closed once loaded
            tls_config = uvicorn.Config(
                app.state.tls_app, host=listen.host, port=listen.tls_port, log_config=None,
                access_log=False, lifespan="off", ssl_certfile=certfile, ssl_keyfile=keyfile,
                **bounded, timeout_graceful_shutdown=grace, **forwarded)
            tls_config.load()
        listeners.append((listening.server(tls_config), listening.tls))
    if config.metrics.metrics_port is not None:
        from gateway.metrics import metrics_only_app

        listeners.append((listening.server(uvicorn.Config(
            metrics_only_app(app.state.metrics), host=config.metrics.metrics_host,
            port=config.metrics.metrics_port, log_config=None, access_log=False, lifespan="off",
            **bounded)), listening.metrics))

    async def all_listeners() -> None:
        listening.stop_on_signals([each for each, _ in listeners])
        side = [asyncio.create_task(each.serve(_sockets(sock))) for each, sock in listeners[1:]]
        # The main listener owns the lifespan (engine, keys).
        await server.serve(_sockets(listeners[0][1]))
        for each, _ in listeners[1:]:
            each.should_exit = True
        await asyncio.gather(*side)

    asyncio.run(all_listeners())
    if store is not None:
        store.close()
    if replay_cache is not None:
        replay_cache.close()
    log.info("stopped", reason="engine failed" if failed else "asked to stop")
    return 1 if failed else 0


def _sockets(sock: socket.socket | None) -> list[socket.socket] | None:
    return [sock] if sock is not None else None
