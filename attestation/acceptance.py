"""Whether verified evidence is acceptable: its claims against reference values.

`accept` tries each set of reference values a client trusts (a signed statement's, or a
local policy's) and returns the one that matches; otherwise it raises the refusal of
the closest candidate (one that pins the evidence's platform), each with its own
`Reason`. Only verified claims are looked at (`attestation.verify`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attestation.errors import Reason, VerificationError
from attestation.platform import GpuClaims, Hardware
from attestation.platforms import cpu_platform
from attestation.reference import GpuValues, ReferenceValues
from attestation.workload import WorkloadClaims


@dataclass(frozen=True)
class Evidence:
    """What `accept` looks at: one platform's verified report, GPUs and the workload."""

    hardware: Hardware
    gpus: tuple[GpuClaims, ...]
    workload: WorkloadClaims
    init_data: str | None = None  # the digest of the init-data document the launch pinned

    @property
    def platform(self) -> str:
        return self.hardware.platform


def accept(evidence: Evidence, candidates: Sequence[ReferenceValues], *,
           any_measurement: bool = False) -> ReferenceValues | None:
    """The first candidate that accepts `evidence` (None in `any_measurement` mode, which
    waives the launch measurement but still holds the workload and models to what the
    candidates name); else the closest refusal."""
    if any_measurement:
        _check_defaults(evidence)
        refusals = []
        for values in candidates:
            try:
                check_workload(evidence.workload, values)
            except VerificationError as err:
                refusals.append(err)
        if candidates and len(refusals) == len(candidates):
            raise refusals[0]
        return None
    pinning = [c for c in candidates if evidence.platform in c.platforms]
    if not candidates:
        raise VerificationError(Reason.NO_REFERENCE_VALUES, "no reference values to check "
                                "the evidence against")
    if not pinning:
        raise VerificationError(Reason.PLATFORM_NOT_PINNED,
                                f"no reference values for {evidence.platform!r}")
    refusal: VerificationError | None = None
    for values in pinning:
        try:
            check(evidence, values)
        except VerificationError as err:
            refusal = refusal or err
            continue
        return values
    assert refusal is not None
    raise refusal


def check(evidence: Evidence, values: ReferenceValues) -> None:
    cpu_platform(evidence.platform).check(evidence.hardware, values.platforms[evidence.platform])
    check_gpus(evidence.gpus, values.gpu)
    check_workload(evidence.workload, values)
    if values.init_data and evidence.init_data not in values.init_data:
        raise VerificationError(Reason.INIT_DATA_NOT_ALLOWED,
                                "the launch did not pin an accepted init-data document "
                                "(its workload and Kata agent policy)")


def check_gpus(gpus: Sequence[GpuClaims], values: GpuValues) -> None:
    if values.required and not gpus:
        raise VerificationError(Reason.GPU_MISSING, "GPU evidence is required")
    for gpu in gpus:
        if gpu.mode not in values.modes:
            raise VerificationError(Reason.GPU_MODE, f"GPU CC mode {gpu.mode} not accepted")
        for index, accepted in values.measurements.items():
            if (gpu.measurements or {}).get(index) not in accepted:
                raise VerificationError(Reason.GPU_MEASUREMENT,
                                        f"GPU measurement block {index} not accepted")
        if values.drivers and gpu.driver_version not in values.drivers:
            raise VerificationError(Reason.GPU_FIRMWARE, "GPU driver version not accepted")
        if values.vbios and gpu.vbios_version not in values.vbios:
            raise VerificationError(Reason.GPU_FIRMWARE, "GPU VBIOS version not accepted")


def check_workload(workload: WorkloadClaims, values: ReferenceValues) -> None:
    if values.workloads and workload.digest not in values.workloads:
        raise VerificationError(Reason.WORKLOAD_NOT_ALLOWED,
                                f"workload {workload.digest} is not an accepted one")
    for model in workload.models:
        accepted = values.model_digests.get(model.name)
        if accepted is not None and model.digest not in accepted:
            raise VerificationError(Reason.MODEL_NOT_ALLOWED,
                                    f"model {model.name!r} has digest {model.digest}, "
                                    "which is not accepted")


def _check_defaults(evidence: Evidence) -> None:
    """What holds even when any measurement is accepted (development): the platform's
    defaults (SNP: no debugging, no migration agent, VMPL 0, the TCB floor; TDX: no
    debugging, an up-to-date TCB) and single-GPU modes."""
    platform = cpu_platform(evidence.platform)
    platform.check(evidence.hardware, platform.default_values(), any_measurement=True)
    check_gpus(evidence.gpus, GpuValues())
