"""Write the hash-locked dependency sets the workload manifest names.

    .venv/bin/python scripts/lock.py [cpu] [gpu]

For each engine kind, pip resolves `cloister[KIND,embeddings]` from the package indexes
(`pip install --dry-run --report`, nothing installed) and the exact versions with their
SHA-256 hashes go to `gateway/data/requirements-KIND.lock`, in the format
`pip install --require-hashes -r` reads (deploy/ builds the image from it). The gateway
puts the SHA-256 of the lock for its engine kind in its workload manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "gateway" / "data"
HEADER = ("# Hash-locked dependencies of cloister[{kind},embeddings] (scripts/lock.py).\n"
          "# Install with: pip install --require-hashes --no-deps -r THIS_FILE\n")


def _pip_env(kind: str) -> dict[str, str]:
    """The GPU set resolves from the public index only: a machine's local wheel folder
    (a CPU torch build, here) must not stand in for the CUDA build."""
    if kind == "cpu":
        return dict(os.environ)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def lock(kind: str) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                        "--ignore-installed", "--report", str(report),
                        f"{ROOT}[{kind},embeddings]"], check=True, env=_pip_env(kind))
        items = json.loads(report.read_text())["install"]
    lines = []
    for item in sorted(items, key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name == "cloister":
            continue  # the project itself is named by its source digest
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise SystemExit(f"{name} {version} has no sha256 in pip's report")
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{hashes['sha256']}")
    path = OUT / f"requirements-{kind}.lock"
    path.write_text(HEADER.format(kind=kind) + "\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    for kind in sys.argv[1:] or ["cpu", "gpu"]:
        print(lock(kind))
