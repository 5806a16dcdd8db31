"""Reference values: what a client accepts, per platform, per GPU, per workload.

One schema serves a signed release statement's predicate (`attestation.statement`) and a
local policy file (TOML or JSON):

    version = 3                       # statements only: monotonic per release line
    valid_until = "2026-12-10T00:00:00Z"
    workloads = ["<workload digest hex>", ...]       # empty: any workload (policies only)
    [platforms.sev-snp]                              # also "simulated-sev-snp"
    measurements = [{vcpus = 4, vcpu_type = "EPYC-v4", measurement = "<96 hex>"}]
    min_tcb = {boot_loader = 4, tee = 0, snp = 22, microcode = 213}  # never below SNP_TCB_FLOOR
    vmpl = 0                                         # the VMPL the report must come from
    forbidden_policy_bits = ["debug", "migrate_ma"]  # the defaults
    [platforms.tdx]                                  # also "simulated-tdx"
    mrtd = ["<96 hex>"]
    rtmr0 = ["<96 hex>"]; rtmr1 = [...]; rtmr2 = [...]
    mrseam = ["<96 hex>"]                           # required: no MRSEAM, no TD accepted
    tcb_statuses = ["UpToDate", "SWHardeningNeeded"]  # default: ["UpToDate"]
    forbidden_attributes = ["debug"]                 # the default
    required_attributes = ["sept_ve_disable"]        # the default
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

from attestation.snp import TcbVersion

# SEV-SNP guest policy bits (AMD SEV-SNP ABI, section 4.3).
POLICY_BITS = {"smt": 16, "migrate_ma": 18, "debug": 19, "single_socket": 20,
               "cxl_allow": 21, "mem_aes_256_xts": 22, "rapl_dis": 23,
               "ciphertext_hiding": 24, "page_swap_disable": 25}
DEFAULT_FORBIDDEN_POLICY_BITS = ("debug", "migrate_ma")
# TDX TD attributes (Intel TDX module ABI): TUD.DEBUG is bit 0 of byte 0;
# SEPT_VE_DISABLE bit 28, PKS bit 30, KL bit 31, PERFMON bit 63 of the 64-bit field.
TD_ATTRIBUTE_BITS = {"debug": 0, "sept_ve_disable": 28, "pks": 30, "kl": 31, "perfmon": 63}
DEFAULT_FORBIDDEN_ATTRIBUTES = ("debug",)
# With SEPT_VE_DISABLE clear, the host can inject #VE on secure-EPT violations at will.
DEFAULT_REQUIRED_ATTRIBUTES = ("sept_ve_disable",)
DEFAULT_TCB_STATUSES = frozenset({"UpToDate"})
# Below this no reference values can go: the TCB of the oldest real SNP report we know
# of (go-sev-guest's Milan sample, `../shared/vectors/snp`). A backstop only; releases
# set their own `min_tcb` (what `cloister measure` saw on the fleet).
SNP_TCB_FLOOR = TcbVersion(boot_loader=2, tee=0, snp=5, microcode=68)
# NVIDIA's multi-GPU modes (the signed report's FEATURE_FLAG): "legacy" is a report
# without the flag (Hopper drivers before it), "spt" single GPU, "mpt" multi-GPU
# passthrough, "ppcie" protected PCIe (NVLink in plaintext: off unless named).
GPU_MODES = ("legacy", "spt", "mpt", "ppcie")
DEFAULT_GPU_MODES = frozenset({"legacy", "spt"})
SNP_PLATFORMS = ("sev-snp", "simulated-sev-snp")
TDX_PLATFORMS = ("tdx", "simulated-tdx")


def _hexes(values: Any) -> frozenset[str]:
    return frozenset(str(v).lower() for v in values or ())


@dataclass(frozen=True)
class SnpValues:
    measurements: frozenset[str]
    min_tcb: TcbVersion | None = None
    vmpl: int = 0
    forbidden_policy_bits: tuple[str, ...] = DEFAULT_FORBIDDEN_POLICY_BITS
    launch_configs: tuple[dict[str, Any], ...] = ()  # for people: vCPUs and type per value

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> SnpValues:
        entries = tuple(raw.get("measurements", ()))
        measured = [e["measurement"] if isinstance(e, Mapping) else e for e in entries]
        tcb = raw.get("min_tcb")
        bits = tuple(raw.get("forbidden_policy_bits", DEFAULT_FORBIDDEN_POLICY_BITS))
        unknown = [b for b in bits if b not in POLICY_BITS]
        if unknown:
            raise ValueError(f"unknown SNP guest policy bit {unknown[0]!r}")
        return cls(_hexes(measured), TcbVersion(**tcb) if tcb else None,
                   int(raw.get("vmpl", 0)), bits,
                   tuple(dict(e) for e in entries if isinstance(e, Mapping)))

    def to_json(self) -> dict[str, Any]:
        entries: list[Any] = list(self.launch_configs) or sorted(self.measurements)
        out: dict[str, Any] = {"measurements": entries, "vmpl": self.vmpl,
                               "forbidden_policy_bits": list(self.forbidden_policy_bits)}
        if self.min_tcb is not None:
            t = self.min_tcb
            out["min_tcb"] = {"boot_loader": t.boot_loader, "tee": t.tee, "snp": t.snp,
                              "microcode": t.microcode}
        return out


@dataclass(frozen=True)
class TdxValues:
    mrtd: frozenset[str]
    rtmrs: dict[int, frozenset[str]] = field(default_factory=dict)
    mrseam: frozenset[str] = frozenset()
    tcb_statuses: frozenset[str] = DEFAULT_TCB_STATUSES
    forbidden_attributes: tuple[str, ...] = DEFAULT_FORBIDDEN_ATTRIBUTES
    required_attributes: tuple[str, ...] = DEFAULT_REQUIRED_ATTRIBUTES

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> TdxValues:
        forbidden = tuple(raw.get("forbidden_attributes", DEFAULT_FORBIDDEN_ATTRIBUTES))
        required = tuple(raw.get("required_attributes", DEFAULT_REQUIRED_ATTRIBUTES))
        unknown = [a for a in forbidden + required if a not in TD_ATTRIBUTE_BITS]
        if unknown:
            raise ValueError(f"unknown TD attribute {unknown[0]!r}")
        return cls(_hexes(raw.get("mrtd")),
                   {i: _hexes(raw[f"rtmr{i}"]) for i in range(4) if f"rtmr{i}" in raw},
                   _hexes(raw.get("mrseam")),
                   frozenset(raw.get("tcb_statuses", DEFAULT_TCB_STATUSES)), forbidden,
                   required)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mrtd": sorted(self.mrtd), "mrseam": sorted(self.mrseam),
                               "tcb_statuses": sorted(self.tcb_statuses),
                               "forbidden_attributes": list(self.forbidden_attributes),
                               "required_attributes": list(self.required_attributes)}
        out.update({f"rtmr{i}": sorted(v) for i, v in sorted(self.rtmrs.items())})
        return out


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


PlatformValues = SnpValues | TdxValues


@dataclass(frozen=True)
class ReferenceValues:
    platforms: dict[str, PlatformValues]
    gpu: GpuValues = GpuValues()
    workloads: frozenset[str] = frozenset()
    model_digests: dict[str, frozenset[str]] = field(default_factory=dict)
    version: int = 0
    valid_until: dt.datetime | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ReferenceValues:
        """From a VALUES.toml / policy file / statement predicate; `ValueError` if bad."""
        try:
            platforms: dict[str, PlatformValues] = {}
            for name, values in dict(raw.get("platforms", {})).items():
                if name in SNP_PLATFORMS:
                    platforms[name] = SnpValues.parse(values)
                elif name in TDX_PLATFORMS:
                    platforms[name] = TdxValues.parse(values)
                else:
                    raise ValueError(f"unknown platform {name!r}")
            until = raw.get("valid_until")
            return cls(platforms, GpuValues.parse(raw.get("gpu", {})),
                       _hexes(raw.get("workloads")),
                       {str(k): frozenset(str(d).lower() for d in v)
                        for k, v in dict(raw.get("model_digests", {})).items()},
                       int(raw.get("version", 0)),
                       _timestamp(until) if until is not None else None)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"malformed reference values ({exc})") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "platforms": {k: v.to_json() for k, v in sorted(self.platforms.items())},
            "gpu": self.gpu.to_json(), "workloads": sorted(self.workloads),
            "model_digests": {k: sorted(v) for k, v in sorted(self.model_digests.items())}}
        if self.valid_until is not None:
            out["valid_until"] = self.valid_until.strftime("%Y-%m-%dT%H:%M:%SZ")
        return out


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
