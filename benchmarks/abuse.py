"""A well-behaved client's service while others abuse the gateway (issue 28).

    .venv/bin/python benchmarks/abuse.py [--seconds 60] [--out benchmarks/results]

Starts the gateway under real uvicorn on loopback (the deterministic test engine from
testkit/doubles.py stands in for vLLM, and the simulated TEE attests: what is measured is
the gateway's own defence) with a small replay store (4,096 records, so that it fills
within the run), then runs the same well-behaved OHTTP client twice, `--seconds` each:
alone, and beside three abusers on other loopback addresses (the gateway counts clients
by address):
    cache fill     valid sealed, undated OHTTP requests as fast as one task sends them
    fake bearers   16 concurrent requests, each with a new made-up `Authorization: Bearer`
    nonce polling  `?nonce=` attestation reports as fast as they are answered
It prints, and writes as JSON, the client's success rate and p50/p95 latency in both
runs and their ratio. The keyholder's challenge flood has a test of its own
(tests/unit/gateway/test_abuse.py: 10,000 challenges, then a replica joins).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.worker_capacity import _wait_health  # noqa: E402
from enclave.ohttp.bhttp import Request as BinaryRequest  # noqa: E402
from enclave.ohttp.bhttp import encode_request  # noqa: E402
from enclave.ohttp.encapsulation import ClientRequest  # noqa: E402
from enclave.ohttp.keyconfig import decode_key_configs  # noqa: E402

SERVER = """
import sys, tempfile, uvicorn
sys.path.insert(0, {root!r})
from attestation.simulated import SimulatedPki
from enclave.replay import MemoryReplayCache
from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.attested import simulated
from testkit.doubles import DeterministicTestEngine
pki = SimulatedPki.load_or_create(__import__("pathlib").Path(tempfile.mkdtemp()))
app = create_app(ServeConfig.of(), DeterministicTestEngine().running,
                 attestation=simulated(pki), replay_cache=MemoryReplayCache(4096))
uvicorn.run(app, host="0.0.0.0", port={port}, log_level="warning")
"""
CHAT = json.dumps({"model": "test-chat", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "hello there"}]}).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(url: str, source: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=30, transport=httpx.AsyncHTTPTransport(
        local_address=source, limits=httpx.Limits(max_connections=64)))


def _sealed(config, *, authorization: str | None = None) -> tuple[bytes, dict[str, str]]:
    inner = BinaryRequest("POST", "/v1/chat/completions", "https", "cloister",
                          (("content-type", "application/json"),), CHAT)
    headers = {"content-type": "message/ohttp-req"}
    if authorization:
        headers["authorization"] = authorization
    return ClientRequest(config, encode_request(inner)).data, headers


async def well_behaved(url: str, seconds: float) -> dict[str, float]:
    """One OHTTP client on its own address, a request at a time, as a proxy sends them."""
    from proxy.attestor import Unverified
    from proxy.dialects import make_client

    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
    client = make_client(url, "ohttp", attestation=Unverified(), transport=transport)
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                answer = await client.request("POST", "/v1/chat/completions", CHAT)
                ok = answer.status == 200
            except Exception:  # noqa: BLE001 - every failure counts, whatever it is
                ok = False
            if ok:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                failures += 1
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    total = len(latencies) + failures
    return {"requests": total, "success_rate": len(latencies) / total if total else 0.0,
            "p50_ms": statistics.median(latencies) if latencies else float("nan"),
            "p95_ms": statistics.quantiles(latencies, n=20)[18] if len(latencies) > 20
            else float("nan")}


async def cache_fill(url: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with _client(url, "127.0.0.4") as http:
        config = decode_key_configs((await http.get("/.well-known/ohttp-gateway")).content)[0]
        while not stop.is_set():
            body, headers = _sealed(config)
            r = await http.post("/.well-known/ohttp-gateway", content=body, headers=headers)
            counts[f"cache_fill {r.status_code}"] = counts.get(f"cache_fill {r.status_code}",
                                                               0) + 1


async def fake_bearers(url: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with _client(url, "127.0.0.5") as http:
        config = decode_key_configs((await http.get("/.well-known/ohttp-gateway")).content)[0]

        async def one() -> None:
            while not stop.is_set():
                body, headers = _sealed(config, authorization=f"Bearer {os.urandom(8).hex()}")
                r = await http.post("/.well-known/ohttp-gateway", content=body,
                                    headers=headers)
                key = f"fake_bearer {r.status_code}"
                counts[key] = counts.get(key, 0) + 1
        await asyncio.gather(*(one() for _ in range(16)))


async def nonce_polling(url: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with _client(url, "127.0.0.6") as http:
        while not stop.is_set():
            r = await http.get("/v1/attestation/report", params={"nonce": os.urandom(32).hex()})
            key = f"nonce_poll {r.status_code}"
            counts[key] = counts.get(key, 0) + 1


async def abuse(url: str, seconds: float) -> dict[str, int]:
    """The three abusers for `seconds` (run in a process of their own: on one event loop
    with the client they would slow the client down, not the gateway)."""
    stop, counts = asyncio.Event(), dict[str, int]()
    abusers = [asyncio.create_task(f(url, stop, counts))
               for f in (cache_fill, fake_bearers, nonce_polling)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*abusers, return_exceptions=True)
    return counts


async def measure(url: str, seconds: float) -> dict[str, object]:
    quiet = await well_behaved(url, seconds)
    abusers = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--abuse", url, "--seconds", str(seconds + 2),
        stdout=asyncio.subprocess.PIPE)
    await asyncio.sleep(1)  # the abuse under way before the client starts
    abused = await well_behaved(url, seconds)
    out, _ = await abusers.communicate()
    return {"quiet": quiet, "abused": abused,
            "abuse_requests": json.loads(out.decode().strip().splitlines()[-1]),
            "p50_ratio": abused["p50_ms"] / quiet["p50_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--abuse", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.abuse:
        print(json.dumps(asyncio.run(abuse(args.abuse, args.seconds))))
        return
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(root=str(ROOT), port=port)],
                              cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url)
        result = asyncio.run(measure(url, args.seconds))
    finally:
        server.terminate()
        server.wait(30)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"abuse-{stamp}.json"
    path.write_text(json.dumps({"seconds": args.seconds, **result}, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
