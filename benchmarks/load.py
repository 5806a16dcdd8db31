"""A thousand concurrent streams through the gateway on loopback (issue: hostile load).

    .venv/bin/python benchmarks/load.py [--streams 1000] [--tokens 40] [--token-delay 0.02]

The gateway runs in a process of its own under uvicorn with its production listener
options; the deterministic test engine (testkit/doubles.py) stands in for vLLM (named in
the results: the cost measured is the gateway's, not a model's). `--streams` clients
each open one chunked-OHTTP stream at once (our sans-IO client side seals and opens;
its crypto runs in this process, not the gateway's). Sampled while they run: the
gateway's RSS and open file descriptors, its event-loop lag (a timer inside it), and
`/health` latency from another client every 50 ms. Counted: streams completed, refused
(429, 503), failed. Results go to `benchmarks/results/load-<time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVER = """
import asyncio, json, resource, sys, time
sys.path.insert(0, {root!r})
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
import uvicorn
from enclave.logs import configure_logging
from gateway.app import create_app
from gateway.http_protocol import listener_options
from gateway.config import ServeConfig
from testkit.doubles import DeterministicTestEngine
configure_logging("info")  # as in production: one JSON line per request, to stderr
app = create_app(ServeConfig.of(insecure_plaintext=False, max_in_flight={max_in_flight},
                          max_per_client={max_in_flight}, max_engine_queue={max_in_flight}),
                 DeterministicTestEngine(token_delay={token_delay}).running)
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port={port}, log_level="warning",
                                       backlog=4096, **listener_options()))

async def lag() -> None:
    worst, samples = 0.0, []
    while True:
        start = time.perf_counter()
        await asyncio.sleep(0.05)
        late = time.perf_counter() - start - 0.05
        samples.append(late)
        worst = max(worst, late)
        if len(samples) % 10 == 0:
            with open({lag_file!r}, "w") as out:
                json.dump({{"worst_ms": worst * 1000, "samples": len(samples),
                            "p99_ms": sorted(samples)[int(len(samples) * 0.99)] * 1000}}, out)

async def main() -> None:
    monitor = asyncio.create_task(lag())
    await server.serve()
    monitor.cancel()

asyncio.run(main())
"""


PROBE = """
import json, time, httpx
samples = []
with httpx.Client(base_url={url!r}, timeout=30) as probe:
    while True:
        start = time.perf_counter()
        probe.get("/health")
        samples.append(time.perf_counter() - start)
        if len(samples) == 1 or len(samples) % 10 == 0:
            with open({out!r} + ".tmp", "w") as f:
                json.dump(samples, f)
            import os; os.replace({out!r} + ".tmp", {out!r})
        time.sleep(0.05)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc(pid: int) -> tuple[float, int]:
    """(RSS MiB, open file descriptors) of a process."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def run_load(url: str, pid: int, streams: int, tokens: int) -> dict[str, object]:
    from proxy.attestor import Unverified
    from proxy.dialects import make_client
    from proxy.errors import ProxyError

    limits = httpx.Limits(max_connections=streams + 16, max_keepalive_connections=streams)
    client = make_client(url, "ohttp", attestation=Unverified(),
                         transport=httpx.AsyncHTTPTransport(limits=limits))
    await client.dialect()  # keys fetched once, before the load
    body = json.dumps({"model": "test-chat", "max_tokens": tokens, "stream": True,
                       "messages": [{"role": "user", "content": "load"}]}).encode()
    outcomes: dict[str, int] = {}
    samples: list[tuple[float, int]] = []
    done = asyncio.Event()

    async def one() -> None:
        try:
            async with client.stream("POST", "/v1/chat/completions", body) as answer:
                content = b"".join([c async for c in answer.chunks()])
            key = (str(answer.status) if answer.status != 200 else
                   "completed" if content.rstrip().endswith(b"data: [DONE]") else "cut")
        except ProxyError as exc:
            key = f"error:{exc.code}"
        outcomes[key] = outcomes.get(key, 0) + 1

    async def sample() -> None:
        while not done.is_set():
            samples.append(_proc(pid))
            await asyncio.sleep(0.25)

    baseline = _proc(pid)
    # The probe is a process of its own: this one is busy with a thousand clients' crypto,
    # and its own lag must not be charged to the gateway.
    probe_file = tempfile.mktemp(prefix="cloister-probe-", suffix=".json")
    probe = subprocess.Popen([sys.executable, "-c", PROBE.format(url=url, out=probe_file)],
                             preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0))
    while not os.path.exists(probe_file):  # connected and answered once: go
        await asyncio.sleep(0.05)
    watchers = [asyncio.create_task(sample())]
    started = time.perf_counter()
    await asyncio.gather(*[one() for _ in range(streams)])
    elapsed = time.perf_counter() - started
    done.set()
    await asyncio.gather(*watchers)
    probe.terminate()
    probe.wait(10)
    health = json.loads(Path(probe_file).read_text())
    await client.aclose()
    after = _proc(pid)
    return {
        "streams": streams, "tokens_per_stream": tokens, "seconds": round(elapsed, 2),
        "outcomes": outcomes,
        "rss_mib": {"before": round(baseline[0], 1),
                    "peak": round(max(s[0] for s in samples), 1), "after": round(after[0], 1)},
        "open_fds": {"before": baseline[1], "peak": max(s[1] for s in samples),
                     "after": after[1]},
        "health_ms": {"max": round(max(health) * 1000, 1),
                      "p99": round(sorted(health)[int(len(health) * 0.99)] * 1000, 1),
                      "median": round(statistics.median(health) * 1000, 1),
                      "samples": len(health)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--nice", type=int, default=10,
                        help="scheduling niceness of this load generator (0: none)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    lag_file = tempfile.mktemp(prefix="cloister-lag-", suffix=".json")
    code = SERVER.format(root=str(ROOT), port=port, token_delay=args.token_delay,
                         max_in_flight=args.streams + 100, lag_file=lag_file)
    server = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # On a small machine the load generator competes with the gateway for the cores; it
    # yields to it (--nice), as clients on other machines would.
    os.nice(args.nice)
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        result = asyncio.run(run_load(url, server.pid, args.streams, args.tokens))
        result["event_loop_lag_ms"] = {k: round(v, 1) if isinstance(v, float) else v
                                       for k, v in json.loads(Path(lag_file).read_text())
                                       .items()}
    finally:
        server.terminate()
        server.wait(30)
    result["load_generator_nice"] = args.nice
    result["engine"] = ("DeterministicTestEngine (testkit/doubles.py), a stand-in for vLLM: "
                        f"{args.token_delay * 1000:.0f} ms per token")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "benchmarks" / "results" / f"load-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
