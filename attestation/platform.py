"""What a TEE platform and a GPU architecture are to Cloister: the two plug-in protocols.

A `CpuPlatform` (AMD SEV-SNP, Intel TDX; `attestation.platforms` lists them) knows its
report: whether a blob is one, how to verify it to its vendor's pinned roots with the
vendor's collateral, where the launch-time field is, its section of reference values
and how a verified report is held against them, and where its collateral comes from. A
`GpuArchitecture` (NVIDIA Hopper) knows its device reports. Everything else
(verification, acceptance, reference values, workload pinning, providers, collateral
fetching, command-line choices) loops over the registry; the simulated TEE plays each
platform from its own subpackage (`attestation.simulated`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from attestation.collateral import Collateral
from attestation.types import CpuEvidence, CpuProvider

SIMULATED_PREFIX = "simulated-"


@dataclass(frozen=True)
class Hardware:
    """What a CPU platform's verifier establishes about one report."""

    platform: str  # the platform's name; `simulated-...` once a simulated root verified it
    root: str  # SHA-256 fingerprint of the root certificate the report chains to
    report_data: bytes
    launch_field: bytes  # what the host set at launch (HOST_DATA, MRCONFIGID)
    measurement: str
    tcb: str
    debug: bool
    report: Any  # the parsed report (`SnpReport`, `TdReport`): what acceptance reads
    tcb_status: str | None = None  # the vendor's verdict on the TCB, where it gives one
    advisory_ids: tuple[str, ...] = ()
    collateral_checked: str = ""  # for people: what the vendor's collateral said
    revocation_checked: bool = True  # False only where the policy waived the revocation list


@dataclass(frozen=True)
class GpuClaims:
    driver_version: str
    vbios_version: str
    mode: str = "legacy"
    measurements: dict[int, str] | None = None  # block index -> hex value


class PlatformValues(Protocol):
    """A platform's section of reference values (`[platforms.<name>]`)."""

    def to_json(self) -> dict[str, Any]: ...


class CpuPlatform(Protocol):
    name: str  # the evidence's platform and its reference-values section: "sev-snp"
    choice: str  # how `--attestation` and `--launch-pin` name it: "snp"
    vendor: str  # whose roots verify it (`TrustRoots`): "amd"
    production_roots: frozenset[str]
    launch_field_size: int  # bytes of the launch-time field
    tsm_provider: str  # what configfs-tsm's `provider` says on this platform
    collateral_service: str  # the vendor's collateral service, unless the operator names one

    def recognises(self, report: bytes, aux: bytes) -> bool:
        """Whether `report` has this platform's structure (never its label)."""

    def verify(self, report: bytes, aux: bytes, collateral: Collateral, *,
               roots: frozenset[str], now: dt.datetime, check_revocation: bool) -> Hardware:
        """Signatures to a pinned root, the vendor's revocation and TCB verdicts."""

    def launch_field(self, report: bytes) -> bytes:
        """The launch-time field of the machine's own report, read unverified."""

    def parse_values(self, raw: Mapping[str, Any]) -> PlatformValues:
        """This platform's reference-values section; `ValueError` if malformed."""

    def default_values(self) -> PlatformValues:
        """Values accepting no measurement: with `any_measurement`, what still holds."""

    def check(self, hardware: Hardware, values: PlatformValues, *,
              any_measurement: bool = False) -> None:
        """`VerificationError` unless the verified report meets `values`."""

    def fallback_provider(self) -> CpuProvider | None:
        """A provider for kernels without configfs-tsm, if the platform has one."""

    def collateral_key(self, evidence: CpuEvidence) -> str:
        """What a cached piece of collateral serves ("sev-snp-Genoa", "tdx-<FMSPC>")."""

    def fetch_collateral(self, evidence: CpuEvidence, service: str,
                         get: Callable[[str], bytes]) -> Collateral:
        """The vendor's current collateral for `evidence` from `service`, through the
        caller's HTTP GET (the gateway's; verifiers never fetch)."""


class GpuArchitecture(Protocol):
    name: str  # "hopper"
    vendor: str  # "nvidia"
    production_roots: frozenset[str]

    def recognises(self, report: bytes) -> bool: ...

    def verify(self, report: bytes, chain_pem: bytes, *, expected_nonce: bytes,
               roots: frozenset[str], now: dt.datetime, ocsp: Sequence[bytes],
               check_revocation: bool = True) -> GpuClaims:
        """The device's signed report, bound to `expected_nonce`, to a pinned root, its
        chain not revoked by the vendor's `ocsp` responses (unless the policy waived it)."""
