"""Crypto microbenchmarks for the OHTTP dialect (issue 3).

    .venv/bin/python benchmarks/crypto_bench.py [--json out.json]

Times, on one core, what the gateway adds per request and per streamed chunk:
  - open a request: HPKE decapsulation of a Binary HTTP request with a 1 KiB prompt
  - seal its response (1 KiB)
  - seal one streamed chunk (16 to 256 bytes of SSE), framing included
Targets (not tests): < 200 us per request (open + seal), < 10 us per chunk.
Each figure is the median of several repeats of a timed loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

from enclave.keys import KeyRing
from enclave.ohttp import ChunkedRequestOpener, ChunkedRequestSealer, ClientRequest
from enclave.ohttp.bhttp import Request, encode_content_chunk, encode_request
from enclave.ohttp.encapsulation import decapsulate_request


def per_call_us(fn: Callable[[], object], *, loops: int, repeats: int = 7) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write results here as JSON")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    keyring = KeyRing()
    config = keyring.current().key_config()
    prompt = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 1024}]})
    inner = encode_request(Request("POST", "/v1/chat/completions", content=prompt.encode()))
    sealed = ClientRequest(config, inner).data
    response = b"y" * 1024

    results: dict[str, float] = {}
    results["open_request_1KiB_us"] = per_call_us(lambda: decapsulate_request(keyring, sealed),
                                                  loops=300)
    _, sealer = decapsulate_request(keyring, sealed)
    results["seal_response_1KiB_us"] = per_call_us(lambda: sealer.seal(response), loops=2000)
    results["request_total_us"] = results["open_request_1KiB_us"] + results[
        "seal_response_1KiB_us"]

    client = ChunkedRequestSealer(config)
    server = ChunkedRequestOpener(keyring)
    server.push(client.header + client.seal_final(inner))
    server.finish()
    chunk_sealer = server.response_sealer()
    for size in (16, 64, 256):
        event = b"d" * size
        results[f"seal_chunk_{size}B_us"] = per_call_us(
            lambda e=event: chunk_sealer.seal_chunk(encode_content_chunk(e)), loops=20000)

    results["targets"] = {"request_total_us": 200, "seal_chunk_us": 10}  # type: ignore[assignment]
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or "unknown", "date": time.strftime("%Y-%m-%d")}
    print("| measurement | microseconds |\n| --- | --- |")
    for name, value in results.items():
        if isinstance(value, float):
            print(f"| {name.removesuffix('_us')} | {value:.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
