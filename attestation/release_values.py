"""From a build to reference values (`cloister release values`): what an operator would
otherwise copy by hand. Everything comes from the build's own outputs:

    workloads       `--workload HEX`, and the workload each `--init-data` document names
    init_data       each `--init-data` document's digest (Confidential Containers: it
                    pins the image digest, command line and environment through its agent
                    policy, `cloister deploy coco`)
    sev-snp         `--snp-measurement HEX` as published (the Kata guest's), or computed
                    for each `--vcpus` from `--ovmf` [`--kernel --initrd --append`], the
                    app volume's dm-verity root hash (`--verity-root`) added to the
                    command line as `cloister.app_roothash=`
    tdx             MRTD / RTMRs / MRSEAM as the TDX toolchain printed them
    gpu             driver and VBIOS versions and measurement blocks from NVIDIA's RIMs
The result is the dictionary `ReferenceValues.parse` reads (and `valid_days`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation.init_data import InitData
from attestation.measure import snp_launch_measurement
from attestation.rim import parse_rim

APP_ROOTHASH = "cloister.app_roothash"


@dataclass
class Build:
    version: int
    valid_days: float = 7
    workloads: list[str] = field(default_factory=list)
    init_data: list[Path] = field(default_factory=list)
    snp_measurements: list[str] = field(default_factory=list)
    ovmf: Path | None = None
    vcpus: list[int] = field(default_factory=list)
    vcpu_type: str = "EPYC-v4"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    verity_root: str | None = None
    tdx: dict[str, list[str]] = field(default_factory=dict)  # mrtd, mrseam, rtmr0..3
    rims: list[Path] = field(default_factory=list)
    gpu_required: bool = False
    model_digests: dict[str, list[str]] = field(default_factory=dict)


def command_line(append: str | None, verity_root: str | None) -> str | None:
    """The kernel command line the launch measures: `append`, with the app volume's root
    hash when there is one."""
    if verity_root is None:
        return append
    if len(verity_root) != 64 or any(c not in "0123456789abcdef" for c in verity_root.lower()):
        raise ValueError("--verity-root is 64 hex digits (app-volume.sh prints it)")
    return " ".join(p for p in (append, f"{APP_ROOTHASH}={verity_root.lower()}") if p)


def reference_values(build: Build) -> dict[str, Any]:
    """`ValueError` (or `MeasureError`) with what is wrong."""
    workloads = [w.lower() for w in build.workloads]
    pinned_documents = []
    for path in build.init_data:
        document = InitData.parse(path.read_bytes())
        workloads.append(document.workload_digest)
        pinned_documents.append(document.digest)
    if not workloads:
        raise ValueError("no workload: give --workload or --init-data")
    out: dict[str, Any] = {"version": build.version, "valid_days": build.valid_days,
                           "workloads": sorted(set(workloads))}
    if pinned_documents:
        out["init_data"] = sorted(set(pinned_documents))
    platforms: dict[str, Any] = {}
    snp = _snp(build)
    if snp:
        platforms["sev-snp"] = {"measurements": snp, "vmpl": 0}
    if build.tdx.get("mrtd"):
        if not build.tdx.get("mrseam"):
            raise ValueError("a TDX entry needs --tdx-mrseam (clients refuse one without)")
        platforms["tdx"] = {k: [v.lower() for v in vs] for k, vs in build.tdx.items() if vs}
    if not platforms:
        raise ValueError("no platform: give SEV-SNP measurements (--snp-measurement, or "
                         "--ovmf with --vcpus) or TDX values (--tdx-mrtd, --tdx-mrseam)")
    out["platforms"] = platforms
    out["gpu"] = _gpu(build.rims, build.gpu_required)
    if build.model_digests:
        out["model_digests"] = {k: sorted(v) for k, v in sorted(build.model_digests.items())}
    return out


def _snp(build: Build) -> list[Any]:
    entries: list[Any] = [m.lower() for m in build.snp_measurements]
    if build.ovmf is None:
        if build.kernel is not None or build.verity_root is not None:
            raise ValueError("--kernel and --verity-root are measured with an --ovmf")
        return entries
    if not build.vcpus:
        raise ValueError("--ovmf needs at least one --vcpus")
    if build.verity_root is not None and build.kernel is None:
        raise ValueError("--verity-root goes on the kernel command line: give --kernel")
    append = command_line(build.append, build.verity_root)
    for vcpus in build.vcpus:
        measurement = snp_launch_measurement(build.ovmf, vcpus=vcpus,
                                             vcpu_type=build.vcpu_type, kernel=build.kernel,
                                             initrd=build.initrd, append=append)
        entries.append({"vcpus": vcpus, "vcpu_type": build.vcpu_type,
                        "measurement": measurement})
    return entries


def _gpu(rims: Sequence[Path], required: bool) -> dict[str, Any]:
    drivers: set[str] = set()
    vbios: set[str] = set()
    blocks: dict[int, set[str]] = {}
    for path in rims:
        rim = parse_rim(path.read_bytes())
        (drivers if rim.kind == "driver" else vbios).add(rim.version)
        for index, values in rim.measurements.items():
            blocks.setdefault(index, set()).update(values)
    out: dict[str, Any] = {"required": required or bool(rims)}
    if drivers:
        out["drivers"] = sorted(drivers)
    if vbios:
        out["vbios"] = sorted(vbios)
    if blocks:
        out["measurements"] = {str(i): sorted(v) for i, v in sorted(blocks.items())}
    return out
