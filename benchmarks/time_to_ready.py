"""Time from `cloister serve` to its first 200 on `/ready` (issue 33: first start).

    .venv/bin/python benchmarks/time_to_ready.py [--repeats 2] [--variants default,one-model]
        [--baseline DIR]

Starts the gateway as `make serve` does (`cloister serve --attestation simulated`, the
built-in demo model, real vLLM on this machine) in a fresh state folder, polls `/ready`
every 100 ms, and stops it once ready. Variants: `default` (as `make serve`: the demo
model and the packaged embedding model, two engines) and `one-model`
(`--embedding-model none`, one engine). The gateway's own `startup_step` log lines
(JSON, as on any non-terminal) give each step's share. Variants are interleaved over
`--repeats` rounds; results go to benchmarks/results/time_to_ready-<UTC>.json. The demo
model is built once, before the first round, so no round pays for that. `--baseline DIR`:
also start, interleaved, the `cloister` of another checkout (say, `git worktree add DIR
main`), for a before-and-after on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"default": [], "one-model": ["--embedding-model", "none"]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _steps(log: Path) -> dict[str, float]:
    steps = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "startup_step":
            steps[event["step"]] = event["duration_s"]
    return steps


def _environment() -> dict[str, str]:
    """This one, less what the gateway's allow-list refuses (as an image starts it)."""
    from enclave.isolation import forbidden_variables, refused_variables

    dropped = {*forbidden_variables(os.environ), *refused_variables(os.environ)}
    return {k: v for k, v in os.environ.items() if k not in dropped}


def one_start(flags: list[str], tree: Path = ROOT, timeout: float = 600) -> dict[str, Any]:
    """Start, wait for `/ready`, stop: the seconds to ready and each step's."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="ttr-") as state:
        log = Path(state) / "serve.log"
        with log.open("w") as sink:
            started = time.monotonic()
            server = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--attestation", "simulated",
                 "--port", str(port), "--state-dir", str(Path(state) / "state"), *flags],
                stdout=sink, stderr=subprocess.STDOUT, cwd=tree, env=_environment())
            ready_after = None
            try:
                while time.monotonic() - started < timeout and server.poll() is None:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/ready",
                                     timeout=2).status_code == 200:
                            ready_after = time.monotonic() - started
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
        if ready_after is None:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"the gateway never became ready ({flags}):\n{tail}")
        return {"ready_s": round(ready_after, 2), "steps": _steps(log)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--baseline", type=Path, default=None)
    args = parser.parse_args()
    trees = {"this tree": ROOT, **({"baseline": args.baseline.resolve()}
                                   if args.baseline else {})}
    names = [f"{variant} ({tree})" for variant in args.variants.split(",") for tree in trees]
    from enclave.demo_model import ensure_demo_model

    ensure_demo_model()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(args.repeats):
        for variant in args.variants.split(","):
            for tree_name, tree in trees.items():
                name = f"{variant} ({tree_name})"
                run = one_start(VARIANTS[variant], tree)
                runs[name].append(run)
                print(f"round {round_ + 1} {name}: ready in {run['ready_s']} s "
                      f"{run['steps']}", flush=True)
    summary = {name: statistics.median(r["ready_s"] for r in rs) for name, rs in runs.items()}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "benchmarks" / "results" / f"time_to_ready-{stamp}.json"
    out.write_text(json.dumps({
        "what": "seconds from `cloister serve --attestation simulated` to 200 on /ready",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "baseline": str(args.baseline) if args.baseline else None,
        "median_ready_s": summary, "runs": runs}, indent=2) + "\n")
    print("median seconds to /ready: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
