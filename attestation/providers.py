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

import datetime as dt
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from attestation import simulated
from attestation.collateral import Collateral, CollateralSource
from attestation.types import CpuEvidence, CpuProvider, GpuProvider, ProviderError
from attestation.workload import base_platform, launch_value

CONFIGFS_TSM_REPORT = Path("/sys/kernel/config/tsm/report")
_PLATFORMS = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}


class NoGpus:
    """A CPU-only deployment: no GPU evidence."""

    def get_reports(self, nonce: bytes) -> list[tuple[bytes, bytes]]:
        return []


class ConfigfsTsmProvider:
    def __init__(self, base: Path = CONFIGFS_TSM_REPORT) -> None:
        self.base = base
        provider = self._probe()
        self.platform = _PLATFORMS.get(provider, provider)

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


class SimulatedSnpProvider:
    """`launch_pin` is the workload digest a host would put in HOST_DATA at launch
    (empty: not pinned)."""

    platform = "simulated-sev-snp"

    def __init__(self, pki: simulated.SimulatedPki, *, launch_pin: bytes = b"") -> None:
        self._pki = pki
        self._host_data = launch_value(launch_pin, self.platform) if launch_pin else b""

    def get_report(self, report_data: bytes) -> CpuEvidence:
        report = simulated.snp_report(self._pki, report_data, host_data=self._host_data)
        return CpuEvidence(self.platform, report, self._pki.cert_table())


class SimulatedTdxProvider:
    """`launch_pin`: what a host would put in MRCONFIGID at launch (empty: not pinned)."""

    platform = "simulated-tdx"

    def __init__(self, pki: simulated.SimulatedPki, *, launch_pin: bytes = b"") -> None:
        self._pki = pki
        self._config_id = launch_value(launch_pin, self.platform) if launch_pin else b""

    def get_report(self, report_data: bytes) -> CpuEvidence:
        quote = self._pki.intel.quote(report_data, config_id=self._config_id,
                                      measurement=simulated.simulated_measurement())
        return CpuEvidence(self.platform, quote)


class SimulatedGpuProvider:
    def __init__(self, pki: simulated.SimulatedPki, count: int = 1) -> None:
        self._pki = pki
        self._count = count

    def get_reports(self, nonce: bytes) -> list[tuple[bytes, bytes]]:
        return [(simulated.gpu_report(self._pki, nonce), self._pki.gpu_chain_pem())
                for _ in range(self._count)]


class SimulatedCollateral:
    """The simulated vendors' collateral, made by the simulated PKI: an ARK-signed CRL
    for SNP, TCB info, QE identity and CRLs for TDX; remade each day, valid a week."""

    def __init__(self, pki: simulated.SimulatedPki) -> None:
        self._pki = pki
        self._made: dict[str, tuple[dt.date, Collateral]] = {}

    def for_report(self, evidence: CpuEvidence) -> Collateral:
        today = dt.datetime.now(dt.UTC).date()
        made = self._made.get(evidence.platform)
        if made is not None and made[0] == today:
            return made[1]
        if base_platform(evidence.platform) == "sev-snp":
            collateral = Collateral(amd_crl=self._pki.amd_crl(days=7))
        else:
            collateral = Collateral(tdx=self._pki.intel.collateral(days=7))
        self._made[evidence.platform] = (today, collateral)
        return collateral


@dataclass(frozen=True)
class Sources:
    """Where a gateway's evidence comes from."""

    cpu: CpuProvider
    gpu: GpuProvider
    collateral: CollateralSource


def _hardware_provider(mode: str, configfs_base: Path) -> CpuProvider:
    """configfs-tsm first; /dev/sev-guest for SNP guests on older kernels."""
    try:
        return ConfigfsTsmProvider(configfs_base)
    except ProviderError as first:
        if mode not in ("auto", "snp"):
            raise
        from attestation.sev_guest import SevGuestProvider

        try:
            return SevGuestProvider()
        except ProviderError:
            raise first from None


def select_providers(mode: str, *, state_dir: Path, collateral: CollateralSource,
                     configfs_base: Path = CONFIGFS_TSM_REPORT,
                     simulated_launch_pin: bytes = b"", gpu_required: bool = False) -> Sources:
    """`auto` finds hardware or fails; `simulated` must be asked for by name (it then
    plays a host that pinned `simulated_launch_pin` at launch, and its own PKI makes the
    collateral). `collateral` serves hardware reports (the gateway fetches it from the
    vendors). With `gpu_required` (the engine runs on CUDA) a GPU that cannot be attested
    stops the start: NVML absent or failing is never read as "no GPUs" then."""
    if mode in ("simulated", "simulated-tdx"):
        pki = simulated.SimulatedPki.load_or_create(state_dir)
        cpu: CpuProvider = (
            SimulatedTdxProvider(pki, launch_pin=simulated_launch_pin) if mode == "simulated-tdx"
            else SimulatedSnpProvider(pki, launch_pin=simulated_launch_pin))
        return Sources(cpu, SimulatedGpuProvider(pki), SimulatedCollateral(pki))
    provider = _hardware_provider(mode, configfs_base)
    if mode != "auto" and provider.platform != {"snp": "sev-snp", "tdx": "tdx"}[mode]:
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
