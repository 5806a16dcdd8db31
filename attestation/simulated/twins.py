"""One simulated twin per CPU platform (`attestation.platforms`): how the simulated PKI
makes that platform's report and collateral, the reference values its evidence shows,
and the `--attestation` choice that starts it; and the providers built on them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from attestation.collateral import Collateral
from attestation.platform import SIMULATED_PREFIX, CpuPlatform, PlatformValues
from attestation.platforms.snp import SNP, SnpValues
from attestation.platforms.tdx import TDX, TdxValues
from attestation.simulated.intel import MR_SEAM
from attestation.simulated.pki import (
    SIMULATED_TCB,
    SimulatedPki,
    gpu_report,
    simulated_measurement,
    snp_report,
)
from attestation.types import CpuEvidence
from attestation.workload import launch_value


@dataclass(frozen=True)
class SimulatedTwin:
    platform: CpuPlatform
    choice: str  # how `--attestation` names it
    # (pki, report_data, launch field) -> (report, aux): what the platform's guest reads
    report: Callable[[SimulatedPki, bytes, bytes], tuple[bytes, bytes]]
    collateral: Callable[[SimulatedPki], Collateral]  # the vendor's, valid a week
    values: Callable[[], PlatformValues]  # what this evidence shows, for the release

    @property
    def name(self) -> str:
        return SIMULATED_PREFIX + self.platform.name


def _measured() -> frozenset[str]:
    return frozenset({simulated_measurement().hex()})


TWINS = (
    SimulatedTwin(
        SNP, "simulated",
        lambda pki, data, field: (snp_report(pki, data, host_data=field), pki.cert_table()),
        lambda pki: Collateral(amd_crl=pki.amd_crl(days=7)),
        lambda: SnpValues(_measured(), min_tcb=SIMULATED_TCB)),
    SimulatedTwin(
        TDX, "simulated-tdx",
        lambda pki, data, field: (pki.intel.quote(data, config_id=field,
                                                  measurement=simulated_measurement()), b""),
        lambda pki: Collateral(tdx=pki.intel.collateral(days=7)),
        lambda: TdxValues(_measured(), mrseam=frozenset({MR_SEAM.hex()}))),
)


def twin(name: str) -> SimulatedTwin:
    """The twin an `--attestation` choice or a simulated platform's name names."""
    for member in TWINS:
        if name in (member.choice, member.name):
            return member
    raise KeyError(name)


class SimulatedCpuProvider:
    """`launch_pin` is the workload digest a host would put in the launch field (HOST_DATA,
    MRCONFIGID) at launch (empty: not pinned)."""

    def __init__(self, pki: SimulatedPki, *, twin: SimulatedTwin = TWINS[0],
                 launch_pin: bytes = b"") -> None:
        self._pki, self._twin = pki, twin
        self.platform = twin.name
        self._field = launch_value(launch_pin, self.platform) if launch_pin else b""

    def get_report(self, report_data: bytes) -> CpuEvidence:
        report, aux = self._twin.report(self._pki, report_data, self._field)
        return CpuEvidence(self.platform, report, aux)


class SimulatedGpuProvider:
    def __init__(self, pki: SimulatedPki, count: int = 1) -> None:
        self._pki = pki
        self._count = count

    def get_reports(self, nonce: bytes) -> list[tuple[bytes, bytes]]:
        return [(gpu_report(self._pki, nonce), self._pki.gpu_chain_pem())
                for _ in range(self._count)]


class SimulatedCollateral:
    """The simulated vendors' collateral, made by the simulated PKI: remade each day,
    valid a week."""

    def __init__(self, pki: SimulatedPki) -> None:
        self._pki = pki
        self._made: dict[str, tuple[dt.date, Collateral]] = {}

    def for_report(self, evidence: CpuEvidence) -> Collateral:
        today = dt.datetime.now(dt.UTC).date()
        made = self._made.get(evidence.platform)
        if made is not None and made[0] == today:
            return made[1]
        collateral = twin(evidence.platform).collateral(self._pki)
        self._made[evidence.platform] = (today, collateral)
        return collateral

    def for_gpus(self, chains: Sequence[bytes]) -> tuple[bytes, ...]:
        """The simulated NVIDIA responder's answers (every simulated GPU has one chain)."""
        return self._pki.gpu_ocsp()
