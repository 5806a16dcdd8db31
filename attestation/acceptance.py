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
from attestation.reference import (
    POLICY_BITS,
    SNP_TCB_FLOOR,
    TD_ATTRIBUTE_BITS,
    GpuValues,
    ReferenceValues,
    SnpValues,
    TdxValues,
)
from attestation.snp import SnpReport
from attestation.tdx import TdReport
from attestation.workload import WorkloadClaims


@dataclass(frozen=True)
class GpuClaims:
    driver_version: str
    vbios_version: str
    mode: str = "legacy"
    measurements: dict[int, str] | None = None  # block index -> hex value


@dataclass(frozen=True)
class Evidence:
    """What `accept` looks at: one platform's verified report, GPUs and the workload."""

    platform: str
    snp: SnpReport | None
    tdx: TdReport | None
    tcb_status: str | None
    gpus: tuple[GpuClaims, ...]
    workload: WorkloadClaims


def accept(evidence: Evidence, candidates: Sequence[ReferenceValues], *,
           any_measurement: bool = False) -> ReferenceValues | None:
    """The first candidate that accepts `evidence` (None in `any_measurement` mode with no
    candidate pinning the platform); else the closest refusal."""
    if any_measurement:
        _check_defaults(evidence)
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
    platform = values.platforms[evidence.platform]
    if isinstance(platform, SnpValues):
        if evidence.snp is None:
            raise VerificationError(Reason.PLATFORM_NOT_PINNED, "not an SNP report")
        check_snp(evidence.snp, platform)
    else:
        if evidence.tdx is None:
            raise VerificationError(Reason.PLATFORM_NOT_PINNED, "not a TDX quote")
        check_tdx(evidence.tdx, evidence.tcb_status, platform)
    check_gpus(evidence.gpus, values.gpu)
    check_workload(evidence.workload, values)


def check_snp(report: SnpReport, values: SnpValues, *, any_measurement: bool = False) -> None:
    if report.vmpl != values.vmpl:
        raise VerificationError(Reason.VMPL, f"the report comes from VMPL {report.vmpl}, "
                                f"not {values.vmpl}")
    for name in values.forbidden_policy_bits:
        if report.policy & (1 << POLICY_BITS[name]):
            reason = Reason.DEBUG if name == "debug" else Reason.GUEST_POLICY
            raise VerificationError(reason, f"the guest policy allows {name}")
    if not any_measurement and report.measurement.hex() not in values.measurements:
        raise VerificationError(Reason.MEASUREMENT, "launch measurement not accepted")
    for minimum, what in ((SNP_TCB_FLOOR, "Cloister's floor"), (values.min_tcb, "the minimum")):
        if minimum is not None and not report.reported_tcb.at_least(minimum):
            raise VerificationError(Reason.TCB_TOO_LOW, f"the reported TCB is below {what}")


def _attribute_set(td: TdReport, name: str) -> bool:
    bit = TD_ATTRIBUTE_BITS[name]
    return bool(int.from_bytes(td.td_attributes, "little") >> bit & 1)


def check_tdx(td: TdReport, tcb_status: str | None, values: TdxValues, *,
              any_measurement: bool = False) -> None:
    for name in values.forbidden_attributes:
        if _attribute_set(td, name):
            reason = Reason.DEBUG if name == "debug" else Reason.TD_ATTRIBUTES
            raise VerificationError(reason, f"the TD has {name} set")
    for name in values.required_attributes:
        if not _attribute_set(td, name):
            raise VerificationError(Reason.TD_ATTRIBUTES, f"the TD runs without {name}")
    if not any_measurement:
        if td.mr_td.hex() not in values.mrtd:
            raise VerificationError(Reason.MEASUREMENT, "MRTD not accepted")
        for index, accepted in values.rtmrs.items():
            if td.rtmrs[index].hex() not in accepted:
                raise VerificationError(Reason.MEASUREMENT, f"RTMR{index} not accepted")
    if not any_measurement and td.mr_seam.hex() not in values.mrseam:
        raise VerificationError(Reason.MRSEAM, "MRSEAM (the TDX module) not accepted")
    if tcb_status is None:
        raise VerificationError(Reason.COLLATERAL_MISSING, "the TCB status is unknown")
    if tcb_status not in values.tcb_statuses:
        raise VerificationError(Reason.TCB_STATUS, f"TCB status {tcb_status} not accepted")


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
    """What holds even when any measurement is accepted (development): no debugging, no
    migration agent, VMPL 0, the TCB floor, an up-to-date TDX TCB, single-GPU modes."""
    if evidence.snp is not None:
        check_snp(evidence.snp, SnpValues(frozenset()), any_measurement=True)
    if evidence.tdx is not None:
        check_tdx(evidence.tdx, evidence.tcb_status, TdxValues(frozenset()),
                  any_measurement=True)
    check_gpus(evidence.gpus, GpuValues())
