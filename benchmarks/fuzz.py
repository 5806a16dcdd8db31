"""Coverage-guided fuzzing of every parser and opener (issue: hostile load), with atheris.

    .venv/bin/python benchmarks/fuzz.py [--iterations 1000000] [--targets ohttp,ehbp,...]

Each target (`benchmarks/fuzz_targets.py`) runs in a process of its own, instrumented
(`enclave`, `attestation`), from seeds the real client sides made, for `--iterations`
inputs. Counted per target: inputs, refusals with a stable error (the expected answer to
garbage), inputs accepted, unexpected exception types (findings), whether the process
crashed, seconds, and peak memory. Results go to `benchmarks/results/fuzz-<time>.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FLUSH_EVERY = 10_000


def child(name: str, iterations: int, stats_path: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=["enclave", "attestation"]):
        from benchmarks.fuzz_targets import EXPECTED, all_targets
    target = next(t for t in all_targets() if t.name == name)
    counts: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    started = time.perf_counter()

    def flush() -> None:
        stats_path.write_text(json.dumps({
            "target": name, "iterations": counts["inputs"],
            "refused": counts["refused"], "accepted": counts["accepted"],
            "unexpected": dict(unexpected), "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }))

    def one_input(data: bytes) -> None:
        counts["inputs"] += 1
        try:
            target.run(data)
            counts["accepted"] += 1
        except EXPECTED:
            counts["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - a finding: counted, and fuzzing goes on
            unexpected[f"{type(exc).__module__}.{type(exc).__name__}"] += 1
        if counts["inputs"] % FLUSH_EVERY == 0 or counts["inputs"] >= iterations:
            flush()

    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for i, seed in enumerate(target.seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    flush()
    atheris.Setup([sys.argv[0], f"-runs={iterations}", "-seed=1", "-max_len=65536",
                   "-rss_limit_mb=2048", str(corpus)], one_input)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1_000_000)
    parser.add_argument("--targets", default="", help="comma-separated (default: all)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per target, seconds")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.iterations, args.stats)
        return 0

    from benchmarks.fuzz_targets import all_targets

    names = [t.name for t in all_targets()]
    chosen = [n for n in args.targets.split(",") if n] or names
    results = []
    for name in chosen:
        stats = Path(tempfile.mkstemp(prefix=f"fuzz-{name}-", suffix=".json")[1])
        done = subprocess.run([sys.executable, __file__, "--child", name, "--iterations",
                               str(args.iterations), "--stats", str(stats)],
                              cwd=ROOT, capture_output=True, text=True, timeout=args.timeout,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        result = json.loads(stats.read_text())
        result["crashed"] = done.returncode != 0 and result["iterations"] < args.iterations
        if result["crashed"]:
            result["crash_output"] = done.stderr[-2000:]
        results.append(result)
        print(f"{name:18} {result['iterations']:>9} inputs  {result['refused']:>9} refused  "
              f"{result['accepted']:>7} accepted  unexpected {result['unexpected'] or 'none'}"
              f"  {'CRASHED ' if result['crashed'] else ''}{result['seconds']} s  "
              f"{result['peak_rss_mib']} MiB", flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "benchmarks" / "results" / f"fuzz-{stamp}.json"
    out.write_text(json.dumps({"iterations_per_target": args.iterations,
                               "results": results}, indent=2) + "\n")
    print(f"results: {out.relative_to(ROOT)}")
    clean = all(not r["unexpected"] and not r["crashed"] for r in results)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
