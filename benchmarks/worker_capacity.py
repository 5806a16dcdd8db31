"""The gateway's own capacity at 1, 2, 4 and 8 worker processes (issue: performance).

    .venv/bin/python benchmarks/worker_capacity.py [--workers 1,2,4,8] [--seconds 15]
        [--clients 2] [--concurrency 32] [--tokens 64] [--repeats 2]

Each worker is what `cloister serve --workers N` runs in a worker, less vLLM: the
deterministic test engine (testkit/doubles.py) stands in for the engine core, and is named
in the results, so what is measured is the gateway's HTTP, crypto and framing. As under
`--workers`, the workers share one listening socket with vLLM's least-loaded accept
(`gateway.workers.WorkerListeners`), derive their keys from one seed and share the
replay records (SQLite on tmpfs). Coalescing is off (`stream_interval_ms=0`): every token
is its own sealed chunk, so the chunk rate is the per-chunk capacity. The load:
`--clients` processes, each keeping `--concurrency` chunked-OHTTP streams of `--tokens`
tokens (`--token-delay` apart, so each leaves as its own chunk) going for `--seconds`;
counted: requests completed and sealed chunks received.
Worker counts are interleaved over `--repeats` rounds. On a machine with few cores the
load generator competes with the workers: read the ratios between worker counts, and
what the machine had (in the results), not the absolute rates.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENGINE = ("DeterministicTestEngine (testkit/doubles.py), a stand-in for vLLM: the cost "
          "measured is the gateway's, not a model's")


def _worker(index: int, sock: socket.socket, loads: Any, seed: bytes, replay_url: str,
            log: str, token_delay: float) -> None:
    """One gateway worker process, set up as `gateway.workers.worker_main` sets one up."""
    sys.stderr = open(log, "a")  # noqa: SIM115 - the process's log, open until it exits
    import uvicorn

    from enclave.fleet import FleetSecrets
    from enclave.logs import configure_logging
    from gateway.app import create_app
    from gateway.config import ServeConfig
    from gateway.http_protocol import listener_options
    from gateway.workers import WorkerListeners
    from testkit.doubles import DeterministicTestEngine

    configure_logging("info")  # as in production: one JSON line per request
    engine = DeterministicTestEngine(token_delay=token_delay)
    listeners = WorkerListeners(sock, None, None, replay_url, True, (loads, index))
    app = create_app(ServeConfig.of(stream_interval_ms=0, max_in_flight=4096, max_per_client=4096,
                              max_engine_queue=4096), engine.running,
                     fleet=FleetSecrets(seed), replay_cache=listeners.shared_replay_cache())
    server = listeners.server(uvicorn.Config(app, log_config=None, access_log=False,
                                             lifespan="on", backlog=4096,
                                             **listener_options()), main=True)

    async def serve() -> None:
        listeners.stop_on_signals([server])
        await server.serve([sock])

    asyncio.run(serve())


def _client(url: str, concurrency: int, tokens: int, seconds: float, out: Any) -> None:
    """One load process: `concurrency` streams in a loop until the time is up."""
    import httpx

    from proxy.attestor import Unverified
    from proxy.dialects import make_client

    async def run() -> dict[str, float]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = make_client(url, "ohttp", attestation=Unverified(),
                             transport=httpx.AsyncHTTPTransport(limits=limits))
        await client.dialect()
        body = json.dumps({"model": "test-chat", "max_tokens": tokens, "stream": True,
                           "messages": [{"role": "user", "content": "capacity"}]}).encode()
        counts = {"requests": 0, "chunks": 0, "failed": 0}
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < deadline:
                try:
                    async with client.stream("POST", "/v1/chat/completions", body) as answer:
                        chunks = 0
                        async for _ in answer.chunks():
                            chunks += 1
                    counts["requests" if answer.status == 200 else "failed"] += 1
                    counts["chunks"] += chunks
                except Exception:  # noqa: BLE001 - counted, the load goes on
                    counts["failed"] += 1

        started, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        counts["wall"] = time.monotonic() - started
        # the load generator's own use of its core: near 1.0, it may be the bottleneck
        counts["cpu_share"] = (time.process_time() - cpu) / counts["wall"]
        await client.aclose()
        return counts

    out.put(asyncio.run(run()))


def _wait_health(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def measure(workers: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from vllm.entrypoints.launchers.launcher import create_server_socket

    spawn = multiprocessing.get_context("spawn")
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    (scratch / "metrics").mkdir()
    replay_url = f"sqlite:///{scratch / 'replay.db'}"
    from gateway.replay_store import SqlReplayCache

    SqlReplayCache(replay_url, scratch=True).close()
    sock = create_server_socket(("127.0.0.1", 0), reuse_port=True)
    sock.listen(4096)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    loads = spawn.RawArray("i", [2**31 - 1] * workers)
    seed = os.urandom(32)
    processes = [spawn.Process(target=_worker, args=(i, sock, loads, seed, replay_url,
                                                     str(folder / f"worker-{workers}-{i}.log"),
                                                     args.token_delay))
                 for i in range(workers)]
    for process in processes:
        process.start()
    try:
        _wait_health(url)
        out = spawn.Queue()
        clients = [spawn.Process(target=_client, args=(url, args.concurrency, args.tokens,
                                                      args.seconds, out))
                   for _ in range(args.clients)]
        for client in clients:
            client.start()
        counts = [out.get(timeout=args.seconds + 120) for _ in clients]
        for client in clients:
            client.join()
    finally:
        for process in processes:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(30)
        sock.close()
        shutil.rmtree(scratch, ignore_errors=True)
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    wall = max(c["wall"] for c in counts)
    return {"workers": workers, "requests": sum(c["requests"] for c in counts),
            "chunks": sum(c["chunks"] for c in counts),
            "failed": sum(c["failed"] for c in counts), "wall_s": round(wall, 2),
            "req_per_s": sum(c["requests"] for c in counts) / wall,
            "load_generator_cpu_share": round(max(c["cpu_share"] for c in counts), 2),
            "chunks_per_s": sum(c["chunks"] for c in counts) / wall}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1,2,4,8",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--token-delay", type=float, default=0.001,
                        help="the stand-in engine's pause between tokens (each then leaves "
                             "as its own sealed chunk)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="worker-capacity-"))
    runs = []
    for repeat in range(args.repeats):
        order = args.workers if repeat % 2 == 0 else list(reversed(args.workers))
        for workers in order:
            run = measure(workers, args, folder)
            run["repeat"] = repeat
            print(json.dumps(run), flush=True)
            runs.append(run)
    base = {r["repeat"]: r for r in runs if r["workers"] == args.workers[0]}
    table = []
    for workers in args.workers:
        mine = [r for r in runs if r["workers"] == workers]
        table.append({
            "workers": workers,
            "req_per_s": round(statistics.median(r["req_per_s"] for r in mine), 1),
            "chunks_per_s": round(statistics.median(r["chunks_per_s"] for r in mine), 0),
            "vs_first": round(statistics.median(
                r["chunks_per_s"] / base[r["repeat"]]["chunks_per_s"] for r in mine), 3),
            "failed": sum(r["failed"] for r in mine)})
    meta = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
            "engine": ENGINE, "command": " ".join(["benchmarks/worker_capacity.py",
                                                   *sys.argv[1:]]),
            "load": f"{args.clients} client processes x {args.concurrency} chunked-OHTTP "
                    f"streams of {args.tokens} tokens, {args.token_delay * 1000:g} ms between "
                    f"tokens, {args.seconds} s per run, coalescing off (one sealed chunk "
                    "per token), on the same machine"}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"worker_capacity-{stamp}.json").write_text(
        json.dumps({"meta": meta, "table": table, "runs": runs}, indent=2))
    print(f"\n{meta['machine']}; {meta['load']}\n")
    print("| workers | requests/s | sealed chunks/s | chunks/s vs 1 worker | failed |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        print(f"| {row['workers']} | {row['req_per_s']} | {row['chunks_per_s']:.0f} | "
              f"{row['vs_first']} | {row['failed']} |")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
