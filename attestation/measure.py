"""Expected SEV-SNP launch measurements, computed with `sev-snp-measure` (the tool the
SNP ecosystem and Tinfoil's release pipeline use; not reimplemented here).

Firmware only: the measurement of the OVMF image, its SEV metadata pages and the vCPUs'
initial state (VMSAs, one per vCPU, whose content depends on the vCPU type and the VMM).
With `kernel` (and `initrd`, `append`): an OVMF built with a kernel-hashes table (the
AmdSev build, `kernel-hashes=on` in QEMU) measures the hashes of those too, so the launch
measurement covers the kernel, initrd and command line that start the gateway. TDX has no
Python tool for MRTD/RTMRs: compute them with Intel's or your VMM's tooling and put them in
VALUES.toml.
"""

from __future__ import annotations

from pathlib import Path


class MeasureError(ValueError):
    """The inputs cannot be measured (unknown vCPU type, an OVMF without SEV metadata, a
    kernel given to an OVMF without a kernel-hashes table)."""


def snp_launch_measurement(ovmf: Path, *, vcpus: int, vcpu_type: str,
                           kernel: Path | None = None, initrd: Path | None = None,
                           append: str | None = None, vmm_type: str = "QEMU",
                           guest_features: int = 0x1) -> str:
    """The 48-byte launch MEASUREMENT an SNP report of such a guest carries, hex."""
    from sevsnpmeasure import guest, vcpu_types, vmm_types
    from sevsnpmeasure.sev_mode import SevMode

    if vcpu_type not in vcpu_types.CPU_SIGS:
        raise MeasureError(f"unknown vCPU type {vcpu_type!r}")
    if not ovmf.is_file():
        raise MeasureError(f"no OVMF file at {ovmf}")
    try:
        vmm = vmm_types.VMMType[vmm_type]
    except KeyError:
        raise MeasureError(f"unknown VMM type {vmm_type!r}") from None
    try:
        digest: bytes = guest.calc_launch_digest(
            SevMode.SEV_SNP, vcpus, vcpu_types.CPU_SIGS[vcpu_type], str(ovmf),
            str(kernel) if kernel else None, str(initrd) if initrd else None, append,
            guest_features, vmm_type=vmm)
    except (RuntimeError, ValueError, AssertionError, KeyError) as exc:
        raise MeasureError(f"cannot measure this guest: {exc}") from None
    return digest.hex()
