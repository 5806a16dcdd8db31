"""How long `/health` waits while the gateway decodes one hostile request (issue 11).

    .venv/bin/python benchmarks/hostile_request.py [--size 1250000] [--root CHECKOUT]

Starts the gateway under real uvicorn on loopback (the deterministic test engine from
testkit/doubles.py stands in for vLLM: the cost measured is the gateway's), then sends
unauthenticated-until-opened chunked OHTTP requests built to be expensive while a
second client polls `/health` every 10 ms:
    bhttp-one-byte   the inner Binary HTTP content is `size / 2` one-byte chunks
    hpke-one-byte    the request is `size / 18` one-byte HPKE chunks
and reports the slowest `/health` answer and the hostile request's own time. `--root`
runs another checkout's gateway (for example the commit before a change), so that two
versions are compared side by side on one machine in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from enclave.ohttp import ChunkedRequestSealer, decode_key_configs  # noqa: E402
from enclave.ohttp.bhttp import Request, encode_request  # noqa: E402

SERVER = """
import sys, uvicorn
sys.path.insert(0, {root!r}); sys.path.insert(1, {here!r})
from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.doubles import DeterministicTestEngine
app = create_app(ServeConfig.of(), DeterministicTestEngine().running)
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bhttp_one_byte(sealer: ChunkedRequestSealer, size: int) -> bytes:
    head = encode_request(Request("POST", "/v1/chat/completions"), indeterminate=True)[:-3]
    inner = head + b"\x01x" * (size // 2) + b"\x00\x00"
    pieces = [inner[i:i + 65536] for i in range(0, len(inner), 65536)]
    return sealer.header + b"".join(sealer.seal_chunk(p) for p in pieces) + \
        sealer.seal_final(b"")


def hpke_one_byte(sealer: ChunkedRequestSealer, size: int) -> bytes:
    head = encode_request(Request("POST", "/v1/chat/completions"), indeterminate=True)
    chunks = [sealer.seal_chunk(head)]
    chunks += [sealer.seal_chunk(b"\x00") for _ in range(size // 18)]
    return sealer.header + b"".join(chunks) + sealer.seal_final(b"")


async def measure(url: str, body: bytes) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        done = asyncio.Event()
        worst = 0.0

        async def poll() -> None:
            nonlocal worst
            while not done.is_set():
                start = time.perf_counter()
                await client.get("/health")
                worst = max(worst, time.perf_counter() - start)
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll())
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        r = await client.post("/.well-known/ohttp-gateway", content=body,
                              headers={"content-type": "message/ohttp-chunked-req"})
        hostile = time.perf_counter() - start
        done.set()
        await poller
    return {"health_worst_ms": round(worst * 1000, 1),
            "hostile_request_s": round(hostile, 2), "status": r.status_code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_250_000)
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="checkout whose gateway is measured (default: this one)")
    parser.add_argument("--label", default="current",
                        help="name of this run in benchmarks/results/ (e.g. before, after)")
    args = parser.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    code = SERVER.format(root=str(args.root.resolve()), here=str(ROOT), port=port)
    server = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        config = decode_key_configs(httpx.get(url + "/.well-known/ohttp-gateway").content)[0]
        results = {}
        for name, build in (("bhttp-one-byte", bhttp_one_byte),
                            ("hpke-one-byte", hpke_one_byte)):
            body = build(ChunkedRequestSealer(config), args.size)
            results[name] = {"bytes": len(body), **asyncio.run(measure(url, body))}
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        report = json.dumps({"label": args.label, "run": stamp, "size": args.size,
                             "results": results}, indent=2)
        print(report)
        out = ROOT / "benchmarks" / "results" / f"hostile_request-{args.label}-{stamp}.json"
        out.write_text(report + "\n")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
