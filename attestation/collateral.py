"""Collateral: what a verifier needs besides the report to judge the hardware, carried in
the evidence so that clients verify offline.

    TDX      Intel's collateral for the quote's platform (FMSPC): TCB info and QE identity
             (JSON, signed by Intel's TCB signing key) with their issuer chains, the PCK
             CRL with its issuer chain, and the root CA CRL; in dcap-qvl's
             `QuoteCollateralV3` JSON form (CRLs hex DER, signatures hex).
    SEV-SNP  AMD's CRL for the chip family (DER, signed by the ARK), which lists revoked
             ASKs and VCEKs.
    GPUs     NVIDIA's OCSP responses (DER), one per certificate below the root of each
             GPU's chain (`attestation.ocsp`).

Every part is signed by the vendor, so carrying it in the document adds no trust in the
gateway; binding it to the report is not needed. A `CollateralSource` supplies it for a
report: fetched from Intel's PCS / a PCCS and AMD's KDS, cached until the vendor's
next-update time (`attestation.collateral_fetch`), or made by the simulated PKI.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptography import x509

from attestation.errors import Reason, VerificationError
from attestation.types import CpuEvidence

TDX_FIELDS = ("pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain",
              "tcb_info", "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity",
              "qe_identity_signature")


@dataclass(frozen=True)
class Collateral:
    tdx: dict[str, str] | None = None
    amd_crl: bytes | None = None
    gpu_ocsp: tuple[bytes, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"tdx": self.tdx,
                "amd_crl": None if self.amd_crl is None else base64.b64encode(
                    self.amd_crl).decode(),
                "gpu_ocsp": [base64.b64encode(r).decode() for r in self.gpu_ocsp]}

    @classmethod
    def from_json(cls, raw: Any) -> Collateral:
        if raw is None:
            return cls()
        try:
            tdx = raw.get("tdx")
            if tdx is not None:
                tdx = {name: str(tdx[name]) for name in TDX_FIELDS}
            crl = raw.get("amd_crl")
            ocsp = tuple(base64.b64decode(r, validate=True) for r in raw.get("gpu_ocsp") or ())
            return cls(tdx, None if crl is None else base64.b64decode(crl, validate=True), ocsp)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise VerificationError(Reason.MALFORMED, "malformed collateral") from None

    def next_update(self) -> dt.datetime | None:
        """When the earliest part of this collateral stops being current (None: no
        collateral, or a part that cannot be read, which a verifier will refuse)."""
        times: list[dt.datetime] = []
        try:
            if self.amd_crl is not None:
                times.append(_crl_next_update(self.amd_crl))
            if self.tdx is not None:
                for name in ("pck_crl", "root_ca_crl"):
                    times.append(_crl_next_update(bytes.fromhex(self.tdx[name])))
                for name in ("tcb_info", "qe_identity"):
                    stamp = json.loads(self.tdx[name])["nextUpdate"]
                    times.append(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")))
            if self.gpu_ocsp:
                from attestation import ocsp

                until = ocsp.next_update(self.gpu_ocsp)
                if until is None:
                    return None
                times.append(until)
        except (ValueError, KeyError, TypeError):
            return None
        return min(times) if times else None


def _crl_next_update(der: bytes) -> dt.datetime:
    update = x509.load_der_x509_crl(der).next_update_utc
    if update is None:
        raise ValueError("a CRL without a next update")
    return update


class CollateralSource(Protocol):
    def for_report(self, evidence: CpuEvidence) -> Collateral:
        """The collateral a verifier needs for `evidence`; `ProviderError` if none can be
        had (a report without it would be refused)."""

    def for_gpus(self, chains: Sequence[bytes]) -> tuple[bytes, ...]:
        """The OCSP responses for the GPUs' certificate chains (PEM); `ProviderError` if
        none can be had."""


@runtime_checkable
class RefreshedCollateral(Protocol):
    """A source that renews what it fetched before it is due, off the report path."""

    def refresh(self) -> None:
        """Fetch again whatever is due; keep the last good copy where that fails."""
