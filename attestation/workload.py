"""The workload manifest: what the gateway runs, bound into its evidence.

    manifest        a JSON object, format "cloister-workload/1":
                    {"format", "cloister": {"version", "source_sha256"},
                     "dependencies": {"lock_sha256"},
                     "engine": {"vllm": version, "environment": {...},
                                "models": [{"role", "name", "digest", "signer",
                                            "engine_args": {...}}]},
                     "settings": {...every security-relevant setting...}}
    workload digest SHA-256 of the manifest's canonical JSON (RFC 8785, the `rfc8785`
                    package), shown as lowercase hex everywhere
    launch pin      the field the host sets at launch and the hardware signs: SNP
                    HOST_DATA (32 bytes) = the digest; TDX MRCONFIGID (48 bytes) = the
                    digest then 16 zero bytes. All zeros: not pinned at launch.
                    Confidential Containers put the hash of an init-data document there
                    instead (SHA-256 on SNP, SHA-384 on TDX, as its `algorithm` says); the
                    document's `[data]` table then holds `"cloister.toml"` with
                    `workload_digest = "<hex>"`, and the evidence carries the document.

The gateway builds the manifest before any key exists (`gateway/workload.py`); a
verifier recomputes the digest from the manifest the evidence carries and refuses any
difference (`attestation.verify`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785

from attestation.errors import Reason, VerificationError
from attestation.init_data import InitData
from attestation.platforms import cpu_platform
from attestation.types import CpuEvidence

FORMAT = "cloister-workload/1"
DIGEST_SIZE = 32


def canonical(manifest: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON: one byte string per manifest, whoever serializes it."""
    return rfc8785.dumps(dict(manifest))


def workload_digest(manifest: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(canonical(manifest)).digest()


def launch_value(digest: bytes, platform: str) -> bytes:
    """What the launch-time field holds when it pins `digest` on `platform`."""
    size = cpu_platform(platform).launch_field_size
    return digest + b"\x00" * (size - len(digest))


@dataclass(frozen=True)
class ModelClaim:
    role: str
    name: str
    digest: str
    signer: str | None
    flags: tuple[str, ...]


@dataclass(frozen=True)
class WorkloadClaims:
    """What a verified manifest says, for policies and for people."""

    digest: str
    manifest: dict[str, Any]
    models: tuple[ModelClaim, ...]
    settings: dict[str, Any]
    pinned_at_launch: bool

    @classmethod
    def parse(cls, manifest: Any, *, pinned_at_launch: bool) -> WorkloadClaims:
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise VerificationError(Reason.MALFORMED, "not a cloister-workload/1 manifest")
        try:
            models = tuple(
                ModelClaim(str(m["role"]), str(m["name"]), str(m["digest"]),
                           None if m.get("signer") is None else str(m["signer"]),
                           tuple(str(f) for f in m.get("flags", [])))
                for m in manifest["engine"]["models"])
            settings = dict(manifest["settings"])
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationError(Reason.MALFORMED, "malformed workload manifest") from exc
        return cls(workload_digest(manifest).hex(), manifest, models, settings,
                   pinned_at_launch)

    @property
    def uses_gpu(self) -> bool:
        """Whether the engine runs on CUDA (then GPU evidence is required)."""
        dependencies = self.manifest.get("dependencies")
        return isinstance(dependencies, dict) and dependencies.get("engine_kind") == "gpu"


def launch_field_of(evidence: CpuEvidence) -> bytes:
    """The launch-time field of a gateway's own report (HOST_DATA or MRCONFIGID), read
    without verification: the gateway asks its own hardware."""
    return cpu_platform(evidence.platform).launch_field(evidence.report)


def check_launch_pin(platform: str, launch_field: bytes, digest: bytes, *,
                     init_data: bytes | None = None) -> bool:
    """True when the launch field pins `digest` (directly, or through an init-data
    document), False when it is all zeros (not pinned); anything else is an error."""
    if not any(launch_field):
        return False
    if launch_field == launch_value(digest, platform):
        return True
    document = pinned_init_data(platform, launch_field, init_data)
    if document is not None and document.workload_digest == digest.hex():
        return True
    raise VerificationError(Reason.LAUNCH_MISMATCH,
                            "the workload pinned at launch is not the one described")


def pinned_init_data(platform: str, launch_field: bytes, init_data: bytes | None
                     ) -> InitData | None:
    """The Confidential Containers init-data document when the launch field holds its
    hash (SHA-256 on SNP, SHA-384 on TDX, as the document says), else None."""
    if init_data is None:
        return None
    document = InitData.parse(init_data)
    pinned = launch_field == document.launch_field(cpu_platform(platform).launch_field_size)
    return document if pinned else None
