"""What padding and coalescing cost (issue 15): bytes on the wire, chunks, time to first
token and total time of streamed answers, beside the plain numbers, in one run.

    .venv/bin/python benchmarks/side_channel_cost.py [--engine vllm|double] [--requests 12]
        [--tokens 64] [--token-delay-ms 20]

Each configuration is a gateway (in process, OHTTP through Cloister's own client) over
one shared engine: `vllm` is the real engine with the demo model (started once, a minute
or two on 2 cores), `double` the deterministic test engine emitting a token every
`--token-delay-ms` (isolates the gateway's own cost). Configurations:
    plain          --padding off --stream-interval-ms 0
    padded         --padding pow2:256 --stream-interval-ms 0
    padded+50ms    --padding pow2:256 --stream-interval-ms 50   (the default)
    constant-50ms  the default plus --constant-rate
Reports medians and ratios to `plain`; writes benchmarks/results/side_channel_cost-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from enclave.padding import PaddingPolicy  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import ServeConfig  # noqa: E402
from proxy.attestor import Unverified  # noqa: E402
from proxy.dialects import make_client  # noqa: E402

CONFIGS = {
    "plain": dict(padding="off", stream_interval_ms=0.0, constant_rate=False),
    "padded": dict(padding="pow2:256", stream_interval_ms=0.0, constant_rate=False),
    "padded+50ms": dict(padding="pow2:256", stream_interval_ms=50.0, constant_rate=False),
    "constant-50ms": dict(padding="pow2:256", stream_interval_ms=50.0, constant_rate=True),
}


class Meter:
    """The gateway app, counting the bytes and pieces each answer had on the wire."""

    def __init__(self, app: Any) -> None:
        self.app, self.pieces, self.bytes = app, 0, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def count(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                self.pieces += 1
                self.bytes += len(message["body"])
            await send(message)
        await self.app(scope, receive, count)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_config(name: str, engine: Any, model: str, args: argparse.Namespace
                     ) -> dict[str, Any]:
    options = dict(CONFIGS[name])
    settings = ServeConfig.of(padding=PaddingPolicy.parse(str(options.pop("padding"))),
                        **options)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def shared() -> AsyncIterator[Any]:
        yield engine

    app = create_app(settings, shared)
    body = json.dumps({"model": model, "max_tokens": args.tokens, "ignore_eos": True,
                       "temperature": 0, "stream": True,
                       "messages": [{"role": "user", "content": "Tell me about the sea."}]}
                      ).encode()
    ttft, total, wire, pieces = [], [], [], []
    meter, port = Meter(app), _free_port()
    server = uvicorn.Server(uvicorn.Config(meter, host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        await app.engine_slot.wait_started()
        url = f"http://127.0.0.1:{port}"
        client = make_client(url, "ohttp", attestation=Unverified())
        await client.dialect()
        for _ in range(args.requests):
            meter.pieces = meter.bytes = 0
            started = time.perf_counter()
            first = None
            async with client.stream("POST", "/v1/chat/completions", body) as answer:
                async for _chunk in answer.chunks():
                    first = first or time.perf_counter()
            done = time.perf_counter()
            ttft.append(((first or done) - started) * 1000)
            total.append((done - started) * 1000)
            wire.append(meter.bytes)
            pieces.append(meter.pieces)
        await client.aclose()
    finally:
        server.should_exit = True
        await serving
    return {"config": name, **CONFIGS[name], "ttft_ms": statistics.median(ttft),
            "total_ms": statistics.median(total), "wire_bytes": statistics.median(wire),
            "pieces": statistics.median(pieces)}


@contextlib.asynccontextmanager
async def engine_for(args: argparse.Namespace) -> AsyncIterator[tuple[Any, str]]:
    if args.engine == "double":
        sys.path.insert(1, str(ROOT / "tests"))
        from testkit.doubles import CHAT_MODEL, DeterministicTestEngine

        yield DeterministicTestEngine(token_delay=args.token_delay_ms / 1000), CHAT_MODEL
        return
    from enclave.vllm_engine import open_vllm_engine
    from gateway.launch import prepare

    launch = prepare(ServeConfig.of(embedding_model="none"))
    async with open_vllm_engine(launch.generate) as engine:
        yield engine, engine.model_names()[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["vllm", "double"], default="vllm")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--token-delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    rows = []
    async with engine_for(args) as (engine, model):
        for name in CONFIGS:
            rows.append(await run_config(name, engine, model, args))
    plain = rows[0]
    print(f"engine {args.engine}, {args.requests} streamed answers of {args.tokens} tokens "
          "each, OHTTP (medians; ratio to plain)")
    print(f"{'config':<15}{'TTFT ms':>14}{'total ms':>16}{'wire bytes':>18}{'pieces':>14}")
    for row in rows:
        cells = [f"{row[k]:.0f} ({row[k] / plain[k] if plain[k] else 0:.2f}x)"
                 for k in ("ttft_ms", "total_ms", "wire_bytes", "pieces")]
        print(f"{row['config']:<15}{cells[0]:>14}{cells[1]:>16}{cells[2]:>18}{cells[3]:>14}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "benchmarks" / "results" / f"side_channel_cost-{args.engine}-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
