"""`cloister serve --workers N`: N gateway processes (HTTP, crypto, framing) in front of
one vLLM engine core per model, on vLLM's own multi-API-server machinery, the one
`vllm serve --api-server-count N` runs: the engine cores are launched once for N
frontends (`enclave.vllm_engine.launch_engine_cores`), vLLM's `APIServerProcessManager`
spawns the N processes with `worker_main` as their server and watches them with the
engine (`wait_for_completion_or_failure`), and each pending connection is accepted by the
least loaded worker (vLLM's `NoSignalServer` over one shared listening socket).

Every worker publishes the same attested keys: the parent makes one root seed (or takes
the fleet's from a keyholder) and every worker derives its keys from it the way fleet
replicas do (`enclave.fleet`). The seed travels over spawn's pipe to the workers, inside
the TEE, and never to the engine cores. The replay records are shared (a SQLite file in a
private tmpfs folder, or the fleet's database), so a request answered by one worker is
refused by every other; so are the platform's state (its database) and the metrics
(prometheus-client's multiprocess mode). What stays per worker: admission limits (each
worker admits `--max-in-flight`), rate buckets and Continuum's registered secrets (a
client whose secret is unknown to a worker registers it again, as with fleet replicas).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from enclave.logs import configure_logging
from gateway.config import ServeConfig

if TYPE_CHECKING:
    import uvicorn

    from enclave.vllm_engine import EngineCores
    from gateway.launch import Launch
    from gateway.replay_store import SqlReplayCache


@dataclass
class WorkerPlan:
    """What the parent hands each worker (pickled over spawn's pipe)."""

    config: ServeConfig
    launch: Launch
    statements: tuple[bytes, ...]
    seed: bytes
    embed_frontends: list[dict[str, Any]] | None
    tls: socket.socket | None
    metrics: socket.socket | None
    replay_url: str
    replay_scratch: bool  # a file of this run's (`gateway.database.open_database`)


@dataclass
class WorkerListeners:
    """One worker's share of what the parent opened: the listening sockets, the shared
    replay records, and the workers' loads for least-loaded accepting."""

    main: socket.socket
    tls: socket.socket | None
    metrics: socket.socket | None
    replay_url: str
    replay_scratch: bool
    peer_loads: tuple[Any, int] | None

    def server(self, config: uvicorn.Config, *, main: bool = False) -> uvicorn.Server:
        from vllm.entrypoints.launchers.launcher import NoSignalServer

        return NoSignalServer(config, peer_loads=self.peer_loads if main else None)

    def stop_on_signals(self, servers: Sequence[uvicorn.Server]) -> None:
        """SIGTERM (from the parent) or SIGINT (a terminal's): a graceful stop."""
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server in servers:
                server.should_exit = True

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)

    def shared_replay_cache(self) -> SqlReplayCache:
        from gateway.replay_store import SqlReplayCache

        return SqlReplayCache(self.replay_url, scratch=self.replay_scratch)


def _scratch_folder() -> str:
    """A private folder for this run's shared files, in memory where the machine has it."""
    shm = "/dev/shm"
    return tempfile.mkdtemp(prefix="cloister-workers-",
                            dir=shm if os.path.isdir(shm) else None)


def run_workers(config: ServeConfig, launch: Launch, statements: tuple[bytes, ...],
                seed: bytes | None) -> int:
    """Launch the engine cores and `--workers` gateway processes; the exit status once
    they are done (non-zero when one of them, or an engine core, failed)."""
    from vllm.entrypoints.launchers.launcher import create_server_socket
    from vllm.v1.utils import APIServerProcessManager, wait_for_completion_or_failure

    from enclave.fleet import SEED_SIZE, FleetSecrets
    from enclave.isolation import isolate_engine_environment
    from enclave.vllm_engine import launch_engine_cores
    from gateway.replay_store import SqlReplayCache
    from gateway.serving import platform_store

    log = structlog.get_logger("cloister.workers")
    count = config.process.workers
    listen, database = config.listeners, config.store.database
    isolate_engine_environment()  # the engine cores and the workers inherit it
    scratch = _scratch_folder()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(scratch, "metrics")
    os.mkdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shared_fleet_db = bool(config.fleet.join) and database is not None
    replay_url = f"sqlite:///{scratch}/replay.db"
    if shared_fleet_db and database is not None:
        replay_url = database
    seed = seed if seed is not None else os.urandom(SEED_SIZE)
    # The shared tables exist before the workers race to create them.
    SqlReplayCache(replay_url, scratch=not shared_fleet_db).close()
    if listen.tls:
        platform_store(config, FleetSecrets(seed) if config.fleet.join else None,
                       workload=launch.digest).close()
    main = create_server_socket((listen.host, listen.port), reuse_port=True)
    tls = (create_server_socket((listen.host, listen.tls_port), reuse_port=True)
           if listen.tls else None)
    metrics_port = config.metrics.metrics_port
    metrics = (create_server_socket((config.metrics.metrics_host, metrics_port),
                                    reuse_port=True) if metrics_port is not None else None)
    asked_to_stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal asked_to_stop
        if not asked_to_stop:
            asked_to_stop = True
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cores: list[EngineCores] = []
    manager = None
    try:
        with contextlib.ExitStack() as starting:  # leaving it waits for the engine cores
            embed = None
            if launch.embed is not None:
                embed = starting.enter_context(launch_engine_cores(launch.embed, count))
                cores.append(embed)
            generate = starting.enter_context(launch_engine_cores(launch.generate, count))
            cores.append(generate)
            plan = WorkerPlan(config, launch, statements, seed,
                              [embed.frontend(i) for i in range(count)] if embed else None,
                              tls, metrics, replay_url, not shared_fleet_db)
            manager = APIServerProcessManager(
                # vLLM hands its server function a Namespace: ours carries only the plan.
                f"http://{listen.host}:{listen.port}", main, argparse.Namespace(cloister=plan),
                count, generate.listeners.inputs, generate.listeners.outputs,
                target_server_fn=worker_main, stats_update_address=generate.stats_address,
                tensor_queue=generate.launch.tensor_queue)
            if embed is not None:
                embed.close_listeners()
            for each in cores:
                each.launch.watched_frontend_processes = manager.processes
        log.info("workers_started", workers=count)
        wait_for_completion_or_failure(api_server_manager=manager,
                                       engine_manager=generate.launch.engine_manager,
                                       coordinator=generate.launch.coordinator)
        return 0
    except SystemExit:
        return 0
    except Exception as exc:  # noqa: BLE001 - a worker or an engine core failed
        log.error("workers_failed", error_type=type(exc).__name__, detail=str(exc))
        return 1
    finally:
        grace = config.timeouts.shutdown_grace + 5 if asked_to_stop else None
        if manager is not None:
            manager.shutdown(timeout=grace)
        for each in reversed(cores):
            each.shutdown(timeout=grace)
        for sock in (main, tls, metrics):
            if sock is not None:
                sock.close()
        shutil.rmtree(scratch, ignore_errors=True)


def worker_main(listen_address: str, sock: socket.socket, parent_args: argparse.Namespace,
                client_config: dict[str, Any]) -> None:
    """One gateway process (the server vLLM's `APIServerProcessManager` starts)."""
    from enclave.vllm_engine import open_vllm_engine
    from gateway.serving import attested_worker, serve_process

    plan: WorkerPlan = parent_args.cloister
    index = client_config["client_index"]
    loads = client_config.pop("api_server_loads", None)
    configure_logging(plan.config.metrics.log_level)
    structlog.contextvars.bind_contextvars(worker=index)
    embed_frontend = None
    for i, frontend in enumerate(plan.embed_frontends or []):
        if i == index:
            embed_frontend = frontend
        else:  # another worker's
            frontend["input_listener"].close()
            frontend["output_listener"].close()
    attested = attested_worker(plan.config, plan.launch, plan.statements)
    if attested is None:
        sys.exit(2)
    launch = plan.launch
    listeners = WorkerListeners(sock, plan.tls, plan.metrics, plan.replay_url,
                                plan.replay_scratch,
                                (loads, index) if loads is not None else None)
    sys.exit(serve_process(
        plan.config, launch, attested, plan.seed,
        lambda: open_vllm_engine(launch.generate, launch.embed,
                                 frontends=(client_config, embed_frontend)),
        listening=listeners))


def warn_past_cores(workers: int, cores: int) -> bool:
    """Say so at start when `--workers` asks for more processes than the machine has
    cores (with the engine's, they compete for them); whether it did."""
    if workers <= cores:
        return False
    print(f"cloister serve: warning: --workers {workers} on {cores} cores. Each worker needs "
          "a core of its own beside the engine's processes; measured on 2 cores "
          "(benchmarks/worker_capacity.py), 2 workers gave 1.16x the sealed chunks/s of one, "
          "and 4 and 8 gave less than one.", file=sys.stderr)
    return True
