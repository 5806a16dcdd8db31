"""One gateway process serving: its evidence sources, its stored state, its listeners
(uvicorn: public, attested TLS, metrics) and the app (`gateway.app.create_app`), until it
is told to stop or its engine dies. `cli.serve` decides what to serve; a process of
`--workers` (`gateway.workers`) serves the same way over listeners its parent opened."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from gateway.config import ServeConfig, admin_public_key
from gateway.http_protocol import listener_options

if TYPE_CHECKING:  # these import vLLM, SQLAlchemy or model-signing: loaded when used
    from collections.abc import Sequence

    import uvicorn

    from attestation.providers import Sources
    from enclave.fleet import FleetSecrets
    from gateway.attestation_routes import Attested
    from gateway.engine_slot import EngineFactory
    from gateway.launch import Launch
    from gateway.platform_store import PlatformStore
    from gateway.replay_store import SqlReplayCache
    from gateway.startup import Startup
    from gateway.tlog import TransparencyLog


class Listening(Protocol):
    """How a serving process listens: alone (`OwnListeners`) or as one of `--workers`
    (`gateway.workers.WorkerListeners`)."""

    @property
    def main(self) -> socket.socket | None: ...

    @property
    def tls(self) -> socket.socket | None: ...

    @property
    def metrics(self) -> socket.socket | None: ...

    def server(self, config: uvicorn.Config, *, main: bool = False) -> uvicorn.Server: ...

    def stop_on_signals(self, servers: Sequence[uvicorn.Server]) -> None: ...

    def shared_replay_cache(self) -> SqlReplayCache | None: ...


# After the engine dies: how long `/health` and `/ready` answer 503 before the exit.
FAILURE_DRAIN_SECONDS = 3.0


def attestation_sources(config: ServeConfig, launch: Launch) -> Sources | None:
    from attestation.providers import ProviderError, select_providers
    from attestation.workload import WorkloadClaims
    from gateway.collateral_fetch import FetchedCollateral

    uses_gpu = WorkloadClaims.parse(launch.manifest, pinned_at_launch=False).uses_gpu
    attestation, state = config.attestation, config.store.folder()
    fetched = FetchedCollateral(state / "collateral",
                                services=attestation.collateral_services())
    try:
        return select_providers(attestation.attestation, state_dir=state,
                                collateral=fetched,
                                simulated_launch_pin=attestation.simulated_pin(launch.digest),
                                gpu_required=uses_gpu)
    except ProviderError as exc:
        print(f"cloister serve: no attestation ({exc}). On a machine without confidential "
              "hardware, pass --attestation simulated (development only).", file=sys.stderr)
        return None


def init_data(config: ServeConfig) -> bytes | None:
    path = config.attestation.launch_init_data
    return path.read_bytes() if path else None


def attested_by(sources: Sources, config: ServeConfig, launch: Launch,
                 statements: tuple[bytes, ...]) -> Attested:
    from gateway.attestation_routes import Attested

    return Attested(sources.cpu, sources.gpu, sources.collateral, launch.manifest,
                    init_data(config), statements)


def attested_worker(config: ServeConfig, launch: Launch,
                    statements: tuple[bytes, ...]) -> Attested | None:
    """A worker process's own evidence sources, for what its parent checked and chose
    (`_attested`): the same workload and reference values."""
    sources = attestation_sources(config, launch)
    return None if sources is None else attested_by(sources, config, launch, statements)


def platform_store(config: ServeConfig, fleet: FleetSecrets | None = None, *,
                   workload: bytes | None = None) -> PlatformStore:
    """The platform's store, sealed with the fleet's data key when the gateway is a
    fleet replica (every replica reads what any other wrote), else with the TEE's key
    bound to the `workload` digest (SEV-SNP; `StoreKeyRefused` without one) or the
    named key file."""
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
    if choice == "snp":
        if workload is None:
            raise StoreKeyRefused("on SEV-SNP the stored state is sealed to the serving "
                                  "workload: administer it through `cloister admin` on the "
                                  "gateway's attested TLS listener")
        return PlatformStore(url, DataKey.from_snp(workload=workload))
    return PlatformStore(url, DataKey.from_key_file(Path(choice.removeprefix("file:"))))


def transparency_log(config: ServeConfig, fleet: FleetSecrets | None) -> TransparencyLog:
    """The log of receipts and release statements (`gateway.tlog`): in the configured
    database (the fleet's, for replicas) or a SQLite file in the state folder; signed by
    the fleet's log key (every replica and worker the same) or one made for this run."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.tlog import LogStore, TransparencyLog

    state = config.store.folder()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = config.store.database or f"sqlite:///{state / 'transparency-log.db'}"
    key = (Ed25519PrivateKey.from_private_bytes(fleet.derive("log-ed25519"))
           if fleet is not None else Ed25519PrivateKey.generate())
    return TransparencyLog(LogStore(url), key)


class StoreKeyRefused(Exception):
    """This process may not open the stored state; the message says what to use."""


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


def serve_process(config: ServeConfig, launch: Launch, attested: Attested,
                  seed: bytes | None, engine: EngineFactory, *,
                  listening: Listening, startup: Startup | None = None) -> int:
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
        store = platform_store(config, fleet if config.fleet.join else None,
                               workload=launch.digest)
    admin = None
    if store is not None and config.admin.admin_public_key is not None:
        from gateway.admin import AdminApi

        # checked, like every measured setting, when the workload was described
        admin = AdminApi(store, admin_public_key(config.admin.admin_public_key))
    replay_cache = listening.shared_replay_cache()  # this gateway's workers'
    if replay_cache is None and fleet is not None and config.store.database is not None:
        from gateway.replay_store import SqlReplayCache

        replay_cache = SqlReplayCache(config.store.database)  # shared by the fleet's replicas
    app = create_app(config, engine, on_engine_failure=on_engine_failure,
                     attestation=attested, platform_store=store, admin=admin,
                     tls_spki_sha256=tls.spki_sha256 if tls is not None else None,
                     fleet=fleet, replay_cache=replay_cache,
                     transparency_log=transparency_log(config, fleet))
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
                app.tls_app, host=listen.host, port=listen.tls_port, log_config=None,
                access_log=False, lifespan="off", ssl_certfile=certfile, ssl_keyfile=keyfile,
                **bounded, timeout_graceful_shutdown=grace, **forwarded)
            tls_config.load()
        listeners.append((listening.server(tls_config), listening.tls))
    if config.metrics.metrics_port is not None:
        from gateway.metrics import metrics_only_app

        listeners.append((listening.server(uvicorn.Config(
            metrics_only_app(app.metrics), host=config.metrics.metrics_host,
            port=config.metrics.metrics_port, log_config=None, access_log=False, lifespan="off",
            **bounded)), listening.metrics))

    async def say_when_ready() -> None:
        assert startup is not None
        with startup.step("starting the engine"):
            if await app.engine_slot.wait_started() is None:
                return
        with startup.step("the known-answer check"):
            await app.known_answer.settled.wait()
        if app.known_answer.ok:
            startup.ready(*_ready_block(config, launch))

    async def all_listeners() -> None:
        listening.stop_on_signals([each for each, _ in listeners])
        side = [asyncio.create_task(each.serve(_sockets(sock))) for each, sock in listeners[1:]]
        if startup is not None:
            side.append(asyncio.create_task(say_when_ready()))
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


def _ready_block(config: ServeConfig, launch: Launch) -> tuple[dict[str, str], str, str]:
    """What `Startup.ready` says: the listeners' URLs, the workload digest, and the line a
    client runs to use this gateway."""
    listen = config.listeners
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::") else listen.host
    urls = {"public": f"http://{host}:{listen.port}"}
    if listen.tls:
        urls["attested TLS"] = f"https://{host}:{listen.tls_port}"
    if config.metrics.metrics_port is not None:
        urls["metrics"] = f"http://{config.metrics.metrics_host}:{config.metrics.metrics_port}"
    trust = (f"--simulated-roots {config.store.folder() / 'simulated-roots.pem'}"
             if config.attestation.simulated else "--release-key YOUR_OPERATORS_RELEASE_KEY.pub")
    return urls, launch.digest.hex(), f"cloister proxy --gateway {urls['public']} {trust}"


def _sockets(sock: socket.socket | None) -> list[socket.socket] | None:
    return [sock] if sock is not None else None
