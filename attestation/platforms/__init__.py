"""The registry of TEE platforms and GPU architectures (`attestation.platform` says what
each is). A new platform is a module here and a line below; the simulated TEE plays them
from `attestation.simulated.twins`. Every user reads the registry when it runs
(`platforms.CPU_PLATFORMS`, `cpu_platform()`), never a copy made at import."""

from __future__ import annotations

from attestation.errors import Reason, VerificationError
from attestation.platform import SIMULATED_PREFIX, CpuPlatform, GpuArchitecture
from attestation.platforms.hopper import HOPPER
from attestation.platforms.snp import SNP
from attestation.platforms.tdx import TDX

CPU_PLATFORMS: tuple[CpuPlatform, ...] = (SNP, TDX)
GPU_ARCHITECTURES: tuple[GpuArchitecture, ...] = (HOPPER,)


def cpu_platform(name: str) -> CpuPlatform:
    """The platform an evidence label or a reference-values section names, simulated or
    not; `VerificationError(UNSUPPORTED)` for any other name."""
    base = name.removeprefix(SIMULATED_PREFIX)
    for platform in CPU_PLATFORMS:
        if platform.name == base:
            return platform
    raise VerificationError(Reason.UNSUPPORTED, f"platform {name!r}")


def platform_choice(choice: str) -> CpuPlatform:
    """The platform a command line names (`snp`, `tdx`); `KeyError` for another."""
    for platform in CPU_PLATFORMS:
        if platform.choice == choice:
            return platform
    raise KeyError(choice)


def production_roots() -> dict[str, frozenset[str]]:
    """Each vendor's published roots, as the registered platforms pin them."""
    roots: dict[str, frozenset[str]] = {}
    pinned = [(p.vendor, p.production_roots) for p in CPU_PLATFORMS]
    pinned += [(a.vendor, a.production_roots) for a in GPU_ARCHITECTURES]
    for vendor, prints in pinned:
        roots[vendor] = roots.get(vendor, frozenset()) | prints
    return roots


__all__ = ["CPU_PLATFORMS", "GPU_ARCHITECTURES", "cpu_platform", "platform_choice",
           "production_roots"]
