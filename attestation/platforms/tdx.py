"""Intel TDX as a Cloister platform: the DCAP quote (`attestation.tdx`) verified to the
pinned Intel SGX Root CA, Intel's collateral (TCB info, QE identity, CRLs) judged by
dcap-qvl (`attestation.dcap`), MRCONFIGID as the launch-time field, and its reference
values:

    [platforms.tdx]                                  # also "simulated-tdx"
    mrtd = ["<96 hex>"]
    rtmr0 = ["<96 hex>"]; rtmr1 = [...]; rtmr2 = [...]
    mrseam = ["<96 hex>"]                           # required: no MRSEAM, no TD accepted
    tcb_statuses = ["UpToDate", "SWHardeningNeeded"]  # default: ["UpToDate"]
    forbidden_attributes = ["debug"]                 # the default
    required_attributes = ["sept_ve_disable"]        # the default
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from attestation import dcap
from attestation.collateral import Collateral
from attestation.errors import BelowPolicyFloor, Reason, VerificationError
from attestation.platform import Hardware, PlatformValues
from attestation.roots import PRODUCTION_INTEL_ROOTS
from attestation.tdx import TdReport, TdxQuote, looks_like_quote, verify_tdx_quote
from attestation.types import CpuEvidence, CpuProvider, ProviderError
from attestation.x509chain import fingerprint, load_pem_chain

# TDX TD attributes (Intel TDX module ABI): TUD.DEBUG is bit 0 of byte 0;
# SEPT_VE_DISABLE bit 28, PKS bit 30, KL bit 31, PERFMON bit 63 of the 64-bit field.
TD_ATTRIBUTE_BITS = {"debug": 0, "sept_ve_disable": 28, "pks": 30, "kl": 31, "perfmon": 63}
DEFAULT_FORBIDDEN_ATTRIBUTES = ("debug",)
FLOOR_FORBIDDEN_ATTRIBUTES = DEFAULT_FORBIDDEN_ATTRIBUTES  # no values may allow these
# With SEPT_VE_DISABLE clear, the host can inject #VE on secure-EPT violations at will.
DEFAULT_REQUIRED_ATTRIBUTES = ("sept_ve_disable",)
DEFAULT_TCB_STATUSES = frozenset({"UpToDate"})
INTEL_PCS_URL = "https://api.trustedservices.intel.com"


def _hexes(values: Any) -> frozenset[str]:
    return frozenset(str(v).lower() for v in values or ())


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
        allowed = [a for a in FLOOR_FORBIDDEN_ATTRIBUTES if a not in forbidden]
        if allowed:
            raise BelowPolicyFloor(f"TDX values may not allow {allowed[0]!r}")
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


def _attribute_set(td: TdReport, name: str) -> bool:
    bit = TD_ATTRIBUTE_BITS[name]
    return bool(int.from_bytes(td.td_attributes, "little") >> bit & 1)


def check_tdx(td: TdReport, tcb_status: str | None, values: TdxValues, *,
              any_measurement: bool = False) -> None:
    for name in dict.fromkeys(FLOOR_FORBIDDEN_ATTRIBUTES + values.forbidden_attributes):
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


class Tdx:
    name = "tdx"
    choice = "tdx"
    vendor = "intel"
    production_roots = PRODUCTION_INTEL_ROOTS
    launch_field_size = 48
    tsm_provider = "tdx_guest"
    collateral_service = INTEL_PCS_URL

    def recognises(self, report: bytes, aux: bytes) -> bool:
        return looks_like_quote(report)

    def verify(self, report: bytes, aux: bytes, collateral: Collateral, *,
               roots: frozenset[str], now: dt.datetime, check_revocation: bool) -> Hardware:
        """Intel's collateral is always needed: the TCB status comes from it."""
        quote = verify_tdx_quote(report, trusted_roots=roots, now=now)
        chain = load_pem_chain(quote.pck_chain_pem)
        if collateral.tdx is None:
            raise VerificationError(Reason.COLLATERAL_MISSING, "the evidence carries no "
                                    "Intel collateral (TCB info, QE identity, CRLs)")
        verdict = dcap.evaluate(report, collateral.tdx, pck_chain=chain, now=now)
        td = quote.td
        advisories = ", ".join(verdict.advisory_ids) or "no advisories"
        return Hardware(self.name, fingerprint(chain[-1]), td.report_data, td.mr_config_id,
                        td.mr_td.hex(), f"{td.tee_tcb_svn.hex()} {verdict.status}", td.debug,
                        td, verdict.status, verdict.advisory_ids,
                        f"Intel collateral checked: {verdict.status} ({advisories})")

    def launch_field(self, report: bytes) -> bytes:
        return TdxQuote.parse(report).td.mr_config_id

    def parse_values(self, raw: Mapping[str, Any]) -> TdxValues:
        return TdxValues.parse(raw)

    def default_values(self) -> TdxValues:
        return TdxValues(frozenset())

    def check(self, hardware: Hardware, values: PlatformValues, *,
              any_measurement: bool = False) -> None:
        if not isinstance(hardware.report, TdReport) or not isinstance(values, TdxValues):
            raise VerificationError(Reason.PLATFORM_NOT_PINNED, "not a TDX quote")
        check_tdx(hardware.report, hardware.tcb_status, values,
                  any_measurement=any_measurement)

    def fallback_provider(self) -> CpuProvider | None:
        return None

    def collateral_key(self, evidence: CpuEvidence) -> str:
        import dcap_qvl

        try:
            return f"{self.name}-{dcap_qvl.parse_quote(evidence.report).fmspc()}"
        except ValueError as exc:
            raise ProviderError("the TDX quote names no FMSPC") from exc

    def fetch_collateral(self, evidence: CpuEvidence, service: str,
                         get: Callable[[str], bytes]) -> Collateral:
        """Intel's PCS API v4, or a PCCS that mirrors it, through dcap-qvl's
        `get_collateral` (it reads the FMSPC and CA from the quote's PCK certificate and
        makes its own requests; `get` is not needed)."""
        import dcap_qvl

        async def fetch() -> Any:
            return await dcap_qvl.get_collateral(service.rstrip("/"), evidence.report)

        fetched: dict[str, Any] = json.loads(asyncio.run(fetch()).to_json())
        return Collateral.from_json({"tdx": fetched})


TDX = Tdx()
