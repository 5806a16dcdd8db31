"""Reference values: what a client accepts, per platform, per GPU, per workload.

One schema serves a signed release statement's predicate (`attestation.statement`) and a
local policy file (TOML or JSON):

    version = 3                       # statements only: monotonic per release line
    valid_until = "2026-12-10T00:00:00Z"
    workloads = ["<workload digest hex>", ...]       # empty: any workload (policies only)
    [platforms.<name>]                               # each platform's own section:
    ...                                              # attestation/platforms/snp.py, tdx.py
    [gpu]
    required = true                                  # also implied by a CUDA workload
    drivers = ["550.90.07"]; vbios = ["96.00.9F.00.01"]
    modes = ["legacy", "spt"]                        # the default: single-GPU CC modes
    measurements = {"1" = ["<96 hex>"], ...}         # index -> accepted values (RIMs)
    [model_digests]                                  # policies: name -> accepted digests
    "my-model" = ["sha256:<hex>"]

Matching is per platform: evidence from a platform with no entry is refused; the
platform is the one the verifier established, never a document's label. An entry whose
measurement list is empty accepts no measurement (fail closed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attestation.errors import VerificationError
from attestation.platform import PlatformValues
from attestation.platforms import cpu_platform

# NVIDIA's multi-GPU modes (the signed report's FEATURE_FLAG): "legacy" is a report
# without the flag (Hopper drivers before it), "spt" single GPU, "mpt" multi-GPU
# passthrough, "ppcie" protected PCIe (NVLink in plaintext: off unless named).
GPU_MODES = ("legacy", "spt", "mpt", "ppcie")
DEFAULT_GPU_MODES = frozenset({"legacy", "spt"})


def _hexes(values: Any) -> frozenset[str]:
    return frozenset(str(v).lower() for v in values or ())


@dataclass(frozen=True)
class GpuValues:
    required: bool = False
    drivers: frozenset[str] = frozenset()
    vbios: frozenset[str] = frozenset()
    modes: frozenset[str] = DEFAULT_GPU_MODES
    measurements: dict[int, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> GpuValues:
        modes = frozenset(raw.get("modes", DEFAULT_GPU_MODES))
        unknown = sorted(modes - set(GPU_MODES))
        if unknown:
            raise ValueError(f"unknown GPU mode {unknown[0]!r}")
        measured = {int(k): _hexes(v) for k, v in dict(raw.get("measurements", {})).items()}
        return cls(bool(raw.get("required", False)), frozenset(raw.get("drivers", ())),
                   frozenset(raw.get("vbios", ())), modes, measured)

    def to_json(self) -> dict[str, Any]:
        return {"required": self.required, "drivers": sorted(self.drivers),
                "vbios": sorted(self.vbios), "modes": sorted(self.modes),
                "measurements": {str(k): sorted(v) for k, v in sorted(self.measurements.items())}}


@dataclass(frozen=True)
class ReferenceValues:
    platforms: dict[str, PlatformValues]
    gpu: GpuValues = GpuValues()
    workloads: frozenset[str] = frozenset()
    model_digests: dict[str, frozenset[str]] = field(default_factory=dict)
    version: int = 0
    valid_until: dt.datetime | None = None
    # Confidential Containers: the init-data documents ("sha256:<hex>") whose hash may be
    # in the launch field (they name the workload and the Kata agent policy)
    init_data: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ReferenceValues:
        """From a VALUES.toml / policy file / statement predicate; `ValueError` if bad."""
        try:
            platforms: dict[str, PlatformValues] = {}
            for name, values in dict(raw.get("platforms", {})).items():
                try:
                    platform = cpu_platform(name)
                except VerificationError:
                    raise ValueError(f"unknown platform {name!r}") from None
                platforms[name] = platform.parse_values(values)
            until = raw.get("valid_until")
            return cls(platforms, GpuValues.parse(raw.get("gpu", {})),
                       _hexes(raw.get("workloads")),
                       {str(k): frozenset(str(d).lower() for d in v)
                        for k, v in dict(raw.get("model_digests", {})).items()},
                       int(raw.get("version", 0)),
                       _timestamp(until) if until is not None else None,
                       frozenset(str(d).lower() for d in raw.get("init_data", ())))
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"malformed reference values ({exc})") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "platforms": {k: v.to_json() for k, v in sorted(self.platforms.items())},
            "gpu": self.gpu.to_json(), "workloads": sorted(self.workloads),
            "model_digests": {k: sorted(v) for k, v in sorted(self.model_digests.items())}}
        if self.init_data:
            out["init_data"] = sorted(self.init_data)
        if self.valid_until is not None:
            out["valid_until"] = self.valid_until.strftime("%Y-%m-%dT%H:%M:%SZ")
        return out


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
