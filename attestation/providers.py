"""Where evidence comes from: one interface, several providers.

    CpuProvider.get_report(report_data) -> CpuEvidence   (SNP report or TDX quote)
    GpuProvider.get_reports(gpu_nonce) -> [(SPDM report, certificate chain PEM)]
    CollateralSource.for_report(evidence) -> Collateral   (vendors' CRLs and TCB data)

configfs-tsm (Linux `/sys/kernel/config/tsm/report`, SNP and TDX guests): make an entry,
write exactly 64 bytes to `inblob`, read `outblob` (the report or quote), `auxblob` (SNP:
the GHCB certificate table with VCEK/ASK/ARK) and `provider`; `generation`, which the
kernel bumps on every write to the entry, must not move while we read (no other writer
raced us). The base path is injectable so tests run the real code against a fake tree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from attestation import platforms
from attestation.collateral import CollateralSource
from attestation.platforms import platform_choice
from attestation.types import CpuEvidence, CpuProvider, GpuProvider, ProviderError

CONFIGFS_TSM_REPORT = Path("/sys/kernel/config/tsm/report")


class NoGpus:
    """A CPU-only deployment: no GPU evidence."""

    def get_reports(self, nonce: bytes) -> list[tuple[bytes, bytes]]:
        return []


class ConfigfsTsmProvider:
    def __init__(self, base: Path = CONFIGFS_TSM_REPORT) -> None:
        self.base = base
        provider = self._probe()
        named = [p.name for p in platforms.CPU_PLATFORMS if p.tsm_provider == provider]
        self.platform = named[0] if named else provider

    def _probe(self) -> str:
        if not self.base.is_dir():
            raise ProviderError(f"{self.base} does not exist: no configfs-tsm")
        entry = self._new_entry()
        try:
            return (entry / "provider").read_text().strip()
        except OSError as exc:
            raise ProviderError(f"configfs-tsm has no provider: {exc.strerror}") from exc
        finally:
            _remove_entry(entry)

    def _new_entry(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="cloister-", dir=self.base))

    def get_report(self, report_data: bytes) -> CpuEvidence:
        if len(report_data) != 64:
            raise ValueError("configfs-tsm inblob takes exactly 64 bytes")
        entry = self._new_entry()
        try:
            (entry / "inblob").write_bytes(report_data)
            before = (entry / "generation").read_text()
            report = (entry / "outblob").read_bytes()
            aux_path = entry / "auxblob"
            aux = aux_path.read_bytes() if aux_path.exists() else b""
            if (entry / "generation").read_text() != before:
                raise ProviderError("configfs-tsm entry was written concurrently")
            return CpuEvidence(self.platform, report, aux)
        except OSError as exc:
            raise ProviderError(f"configfs-tsm refused the report: {exc.strerror}") from exc
        finally:
            _remove_entry(entry)


def _remove_entry(entry: Path) -> None:
    """configfs removes an entry's attributes with it; a plain folder needs them gone."""
    try:
        os.rmdir(entry)
    except OSError:
        shutil.rmtree(entry, ignore_errors=True)


@dataclass(frozen=True)
class Sources:
    """Where a gateway's evidence comes from."""

    cpu: CpuProvider
    gpu: GpuProvider
    collateral: CollateralSource


def attestation_choices() -> tuple[str, ...]:
    """What `--attestation` takes: `auto`, each platform, each platform's simulated twin."""
    from attestation.simulated.twins import TWINS

    return ("auto", *(p.choice for p in platforms.CPU_PLATFORMS), *(t.choice for t in TWINS))


def _hardware_provider(mode: str, configfs_base: Path) -> CpuProvider:
    """configfs-tsm first; else the platform's own device (SNP: /dev/sev-guest on older
    kernels)."""
    try:
        return ConfigfsTsmProvider(configfs_base)
    except ProviderError as first:
        wanted = platforms.CPU_PLATFORMS if mode == "auto" else (platform_choice(mode),)
        for platform in wanted:
            try:
                fallback = platform.fallback_provider()
            except ProviderError:
                continue
            if fallback is not None:
                return fallback
        raise first from None


def select_providers(mode: str, *, state_dir: Path, collateral: CollateralSource,
                     configfs_base: Path = CONFIGFS_TSM_REPORT,
                     simulated_launch_pin: bytes = b"", gpu_required: bool = False) -> Sources:
    """`auto` finds hardware or fails; a simulated twin must be asked for by name (it
    then plays a host that pinned `simulated_launch_pin` at launch, and its own PKI makes
    the collateral). `collateral` serves hardware reports (the gateway fetches it from
    the vendors). With `gpu_required` (the engine runs on CUDA) a GPU that cannot be
    attested stops the start: NVML absent or failing is never read as "no GPUs" then."""
    if mode.startswith("simulated"):
        from attestation.simulated.pki import SimulatedPki
        from attestation.simulated.twins import (
            SimulatedCollateral,
            SimulatedCpuProvider,
            SimulatedGpuProvider,
            twin,
        )

        pki = SimulatedPki.load_or_create(state_dir)
        cpu = SimulatedCpuProvider(pki, twin=twin(mode), launch_pin=simulated_launch_pin)
        return Sources(cpu, SimulatedGpuProvider(pki), SimulatedCollateral(pki))
    provider = _hardware_provider(mode, configfs_base)
    if mode != "auto" and provider.platform != platform_choice(mode).name:
        raise ProviderError(f"asked for {mode}, the hardware offers {provider.platform}")
    return Sources(provider, gpu_provider(required=gpu_required), collateral)


def gpu_provider(*, required: bool, nvml: object = None) -> GpuProvider:
    """NVML's GPUs, verified locally and set ready; none on a machine without GPUs,
    unless `required`: then a missing or failing NVML stops the start (`nvml` is the
    pynvml module, injected in tests)."""
    from attestation.nvml import NoGpuFound, NvmlGpuProvider

    try:
        gpus = NvmlGpuProvider(nvml)
    except NoGpuFound as exc:
        if required:
            raise ProviderError(f"the engine runs on a GPU, but no GPU can be attested: {exc}"
                                ) from exc
        return NoGpus()
    gpus.verify_and_set_ready()
    return gpus


__all__ = ["CpuEvidence", "CpuProvider", "GpuProvider", "NoGpus", "ProviderError", "Sources",
           "select_providers"]
