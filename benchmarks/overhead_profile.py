"""Where Cloister's own time goes, per request and per streamed chunk (issue 8).

    .venv/bin/python benchmarks/overhead_profile.py [--requests 300] [--max-tokens 32]

Runs chunked-OHTTP streamed chat requests through the gateway app in-process with the
deterministic test engine (testkit/doubles.py: no model, so what remains is the gateway),
under cProfile. Requests are sealed before the profiled window and responses are not
opened, so only the gateway's side is measured. Own time is grouped by where it is
spent: HPKE and AEAD (crypto), OHTTP/BHTTP framing, the engine bridge, Starlette and
middleware, JSON, the event loop, and the test engine itself (not Cloister's cost); and
each protection's share (replay records, receipts and the log, padding, sampling caps):
its modules' own time and that of the primitives they call directly.

The stand-in engine answers at once, so a request's tokens leave in few coalesced chunks
and "per chunk" above divides a request's fixed costs (HPKE, replay record, receipt) by
few chunks. The marginal cost of one more chunk is measured apart, without the profiler:
the engine then sends each token as its own event (one sealed chunk each), requests of 8
and of 64 tokens are timed in CPU (time.process_time), the engine alone is timed the same
way and subtracted, and the difference per extra chunk is Cloister's own.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from enclave.logs import configure_logging  # noqa: E402
from enclave.ohttp import ChunkedRequestSealer  # noqa: E402
from enclave.ohttp.bhttp import Request, encode_request  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import ServeConfig  # noqa: E402
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine  # noqa: E402

CATEGORIES = [
    ("crypto (HPKE, AEAD, HKDF)", ("pyhpke", "cryptography", "enclave/ohttp/suites",
                                   "enclave/ohttp/encapsulation", "enclave/keys")),
    ("OHTTP chunk framing + Binary HTTP", ("enclave/ohttp/chunked", "enclave/ohttp/bhttp",
                                           "enclave/ohttp/varint")),
    ("engine bridge (in-process ASGI call, relay)", ("enclave/engine", "gateway/engine_call",
                                                     "gateway/endpoint")),
    ("gateway routes, middleware, metrics, logs", ("gateway/", "prometheus_client", "structlog",
                                                   "logging")),
    ("Starlette / ASGI plumbing", ("starlette", "anyio")),
    ("JSON", ("json/",)),
    ("event loop", ("asyncio", "selectors")),
    ("test engine (not Cloister)", ("testkit/doubles",)),
]


def _category(filename: str, function: str) -> str:
    if filename == "~":  # a built-in: classify by what it is
        if any(w in function for w in ("encrypt", "decrypt", "exchange", "derive", "hmac")):
            return CATEGORIES[0][0]
        if "json" in function or "encode" in function:
            return "JSON"
        return "other built-ins"
    for name, needles in CATEGORIES:
        if any(n in filename for n in needles):
            return name
    return "other"


# Each protection's code, by module (its share: `protection_shares`).
PROTECTIONS = [
    ("replay records", ("enclave/replay.py", "gateway/replay_store.py")),
    ("receipts and the transparency log", ("enclave/receipts.py", "gateway/tlog.py",
                                           "enclave/tlog/")),
    ("padding", ("enclave/padding.py",)),
    ("sampling caps and cache salts", ("gateway/sampling.py",)),
]


PRIMITIVES = ("~", "cryptography", "hashlib", "hmac", "json/", "rfc8785", "base64", "os.py")


def protection_shares(stats: pstats.Stats, own_total: float) -> dict[str, float]:
    """Each protection's share of Cloister's own time: the own time of its modules' code
    and of the primitives it calls directly (hashing, signing, JSON, random bytes), not
    of the rest of Cloister it calls back into (padding wraps the sealing: that stays
    the sealing's)."""
    table = stats.stats  # type: ignore[attr-defined]
    shares = {}
    for name, modules in PROTECTIONS:
        def inside(key: tuple[str, int, str], modules: tuple[str, ...] = modules) -> bool:
            return any(m in key[0] for m in modules)

        spent = sum(table[key][2] for key in table if inside(key))
        for key, (_, _, _, _, callers) in table.items():
            if inside(key) or not any(p in key[0] for p in PRIMITIVES):
                continue
            # a primitive's cumulative time from each caller in this protection
            spent += sum(times[3] for caller, times in callers.items() if inside(caller))
        shares[name] = round(spent / own_total, 4) if own_total else 0.0
    return shares


def _called_from_test_engine(stats: pstats.Stats, key: tuple[str, int, str]) -> bool:
    """Whether a JSON function ran for the test engine: its nearest caller outside the
    json package (by most calls) is in testkit/doubles."""
    seen = set()
    while key not in seen:
        seen.add(key)
        callers = stats.stats[key][4]  # type: ignore[attr-defined]
        if not callers:
            return False
        key = max(callers, key=lambda c: callers[c][0])
        if "json" not in key[0] and "json" not in key[2]:
            return "testkit/doubles" in key[0]
    return False


def _scope(length: int) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/.well-known/ohttp-gateway", "raw_path": b"/.well-known/ohttp-gateway",
            "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
            "server": ("gw", 80), "headers": [(b"content-type", b"message/ohttp-chunked-req"),
                                              (b"content-length", str(length).encode())]}


async def _one(app, body: bytes) -> int:
    chunks = 0
    delivered = False
    done = asyncio.Event()

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal chunks
        if message["type"] == "http.response.body" and message.get("body"):
            chunks += 1

    await app(_scope(len(body)), receive, send)
    done.set()
    return chunks


def _sealed(config, payload: bytes) -> bytes:
    inner = encode_request(Request("POST", "/v1/chat/completions", content=payload),
                           indeterminate=True)
    sealer = ChunkedRequestSealer(config)
    return sealer.header + sealer.seal_chunk(inner) + sealer.seal_final(b"")


def _chat(tokens: int) -> bytes:
    return json.dumps({"model": CHAT_MODEL, "stream": True, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": "x " * 200}]}).encode()


async def marginal(requests: int = 120, short: int = 8, long: int = 64) -> dict[str, float]:
    """Cloister's own CPU per extra sealed chunk, and per request (see the docstring)."""
    from enclave.engine import EngineRequest, call_engine

    engine = DeterministicTestEngine(token_delay=1e-6)  # each token its own event
    app = create_app(ServeConfig.of(max_per_client=10**6, max_in_flight=10**6,
                                    stream_interval_ms=0), engine.running)

    async def gateway(tokens: int) -> tuple[float, int]:
        config = app.keyring.current().key_config()
        bodies = [_sealed(config, _chat(tokens)) for _ in range(requests)]
        cpu, chunks = time.process_time(), 0
        for body in bodies:
            chunks += await _one(app, body)
        return time.process_time() - cpu, chunks

    async def engine_alone(tokens: int) -> float:
        cpu = time.process_time()
        for _ in range(requests):
            response = await call_engine(engine, EngineRequest(
                "POST", "/v1/chat/completions", _chat(tokens)))
            await response.read()
        return time.process_time() - cpu

    async with app.router.lifespan_context(app):
        await app.engine_slot.wait_started()
        await app.known_answer.settled.wait()
        await gateway(short)  # warm-up
        (cpu_short, chunks_short), (cpu_long, chunks_long) = (
            await gateway(short), await gateway(long))
        engine_short, engine_long = await engine_alone(short), await engine_alone(long)
    extra_chunks = (chunks_long - chunks_short) / requests
    own_long = (cpu_long - engine_long) / requests
    own_short = (cpu_short - engine_short) / requests
    per_chunk = (own_long - own_short) / extra_chunks
    return {"chunks_short": chunks_short / requests, "chunks_long": chunks_long / requests,
            "us_per_extra_chunk": round(per_chunk * 1e6, 1),
            "us_per_request_fixed": round((own_short - per_chunk * chunks_short / requests)
                                          * 1e6, 1)}


async def main(requests: int, max_tokens: int, interval_ms: float,
               out: Path | None = None) -> None:
    configure_logging("info", stream=open(os.devnull, "w"))  # noqa: SIM115 - as in production
    engine = DeterministicTestEngine()
    # Coalescing off by default (`--stream-interval-ms`): every engine event is a chunk,
    # so the cost per chunk is measured, not the wait of the timer.
    app = create_app(ServeConfig.of(max_per_client=10**6, max_in_flight=10**6,
                              stream_interval_ms=interval_ms), engine.running)
    async with app.router.lifespan_context(app):
        await app.engine_slot.wait_started()
        config = app.keyring.current().key_config()
        payload = json.dumps({"model": CHAT_MODEL, "stream": True, "max_tokens": max_tokens,
                              "messages": [{"role": "user", "content": "x " * 200}]}).encode()
        inner = encode_request(Request("POST", "/v1/chat/completions", content=payload),
                               indeterminate=True)
        bodies = []
        for _ in range(requests):
            sealer = ChunkedRequestSealer(config)
            bodies.append(sealer.header + sealer.seal_chunk(inner) + sealer.seal_final(b""))
        await _one(app, bodies[0])  # warm-up
        plain_start = time.perf_counter()
        for body in bodies[: requests // 2]:
            await _one(app, body)
        plain = (time.perf_counter() - plain_start) / (requests // 2)
        bodies = bodies[requests // 2:]
        requests = len(bodies)
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        chunks = 0
        for body in bodies:
            chunks += await _one(app, body)
        profile.disable()
        wall = time.perf_counter() - start
    stats = pstats.Stats(profile)
    by_category: dict[str, float] = {}
    for key, (_, _, tottime, _, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        filename, _, function = key
        if "epoll" in function:  # the loop waiting for work: idle, not a cost
            continue
        cat = _category(filename, function)
        if cat == "JSON" and _called_from_test_engine(stats, key):
            cat = "test engine (not Cloister)"  # the stand-in encoding its own events
        by_category[cat] = by_category.get(cat, 0.0) + tottime
    total = sum(by_category.values())
    engine_share = by_category.get("test engine (not Cloister)", 0.0)
    print(f"{requests} streamed requests, {chunks / requests:.0f} sealed chunks each, "
          f"{wall:.2f} s under the profiler")
    own_share = (total - engine_share) / total
    per_request = plain * own_share
    print(f"Without the profiler: {plain * 1e6:.0f} us per streamed request in all, of which "
          f"Cloister's own share ({own_share:.0%}) is {per_request * 1e6:.0f} us, i.e. "
          f"{per_request / (chunks / requests) * 1e6:.1f} us per chunk sent\n")
    print("| where | share of own time |\n| --- | ---: |")
    for cat, secs in sorted(by_category.items(), key=lambda kv: -kv[1]):
        if cat != "test engine (not Cloister)":
            print(f"| {cat} | {secs / (total - engine_share) * 100:.0f}% |")
    protections = protection_shares(stats, total - engine_share)
    print("\n| protection | share of own time |\n| --- | ---: |")
    for name, share in protections.items():
        print(f"| {name} | {share * 100:.1f}% |")
    print("\nTop functions by own time:")
    stats.sort_stats("tottime").print_stats(12)
    extra = await marginal()
    print(f"\nMarginal, without the profiler (CPU, the engine's own subtracted): "
          f"{extra['us_per_extra_chunk']} us per extra sealed chunk, "
          f"{extra['us_per_request_fixed']} us per request besides")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        result = {"requests": requests, "chunks_per_request": round(chunks / requests, 1),
                  "us_per_request": round(plain * 1e6, 1), "own_share": round(own_share, 3),
                  # a request's own cost over its (coalesced) chunks: see "marginal"
                  "us_per_chunk_sent": round(per_request / (chunks / requests) * 1e6, 2),
                  "shares": {cat: round(secs / (total - engine_share), 4)
                             for cat, secs in by_category.items()
                             if cat != "test engine (not Cloister)"},
                  "protections": protections,
                  "marginal": extra, "cores": os.cpu_count(), "goal_us_per_chunk": 20}
        (out / f"overhead_profile-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--stream-interval-ms", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the result as JSON into this folder")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.max_tokens, args.stream_interval_ms, args.out))
