"""The gateway's collateral for its own platform, fetched from the vendors and cached
until their next-update time, so every report carries it and clients verify offline.

    TDX      Intel's PCS API v4, or a PCCS that mirrors it (`--pccs-url`), through
             dcap-qvl's `get_collateral` (it reads the FMSPC and CA from the quote's PCK
             certificate).
    SEV-SNP  AMD's KDS: `{kds}/vcek/v1/{family}/crl`, the family named by the ARK.

Here in the gateway, not in `attestation/`, because it does network I/O (verifiers never
do). Cached in memory and in `folder` (a JSON file per platform and FMSPC or family) until
the earliest next-update of its parts, less `REFRESH_MARGIN`. When nothing current can
be had the report fails (`ProviderError`, 503 to clients): evidence without current
collateral would be refused by every verifier anyway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from attestation import amd_crl
from attestation.certtable import ARK_GUID, parse_cert_table
from attestation.collateral import Collateral
from attestation.errors import VerificationError
from attestation.types import CpuEvidence, ProviderError
from attestation.workload import base_platform

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
AMD_KDS_URL = "https://kdsintf.amd.com"
REFRESH_MARGIN = dt.timedelta(hours=1)
FETCH_TIMEOUT = 15.0


class FetchedCollateral:
    def __init__(self, folder: Path, *, pccs_url: str = INTEL_PCS_URL,
                 kds_url: str = AMD_KDS_URL,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._folder = folder
        self._pccs, self._kds = pccs_url.rstrip("/"), kds_url.rstrip("/")
        self._clock = clock
        self._memory: dict[str, Collateral] = {}
        # One fetch at a time: a burst of reports after expiry makes one request, not many.
        self._lock = threading.Lock()

    def for_report(self, evidence: CpuEvidence) -> Collateral:
        key, fetch = self._what(evidence)
        with self._lock:
            known = self._memory.get(key) or self._read(key)
            if known is not None and self._current(known):
                self._memory[key] = known
                return known
            try:
                fresh = fetch()
            except (httpx.HTTPError, ValueError, RuntimeError, OSError) as exc:
                raise ProviderError(f"cannot fetch collateral for {key}: {exc}") from exc
            if not self._current(fresh):
                raise ProviderError(f"the collateral fetched for {key} is not current")
            self._memory[key] = fresh
            self._write(key, fresh)
            return fresh

    def _what(self, evidence: CpuEvidence) -> tuple[str, Callable[[], Collateral]]:
        platform = base_platform(evidence.platform)
        if platform == "sev-snp":
            try:
                ark = x509.load_der_x509_certificate(parse_cert_table(evidence.aux)[ARK_GUID])
                family = amd_crl.family(ark)
            except (KeyError, ValueError, VerificationError) as exc:
                raise ProviderError("the SNP report came without an ARK to name its family"
                                    ) from exc
            return f"sev-snp-{family}", lambda: Collateral(amd_crl=self._kds_crl(family))
        if platform == "tdx":
            import dcap_qvl

            try:
                fmspc = dcap_qvl.parse_quote(evidence.report).fmspc()
            except ValueError as exc:
                raise ProviderError("the TDX quote names no FMSPC") from exc
            return f"tdx-{fmspc}", lambda: Collateral(tdx=self._pcs(evidence.report))
        raise ProviderError(f"no collateral for platform {evidence.platform!r}")

    def _kds_crl(self, family: str) -> bytes:
        response = httpx.get(f"{self._kds}/vcek/v1/{family}/crl", timeout=FETCH_TIMEOUT)
        response.raise_for_status()
        x509.load_der_x509_crl(response.content)  # ValueError if it is not one
        return response.content

    def _pcs(self, quote: bytes) -> dict[str, str]:
        import dcap_qvl

        async def fetch() -> Any:
            return await dcap_qvl.get_collateral(self._pccs, quote)

        fetched: dict[str, Any] = json.loads(asyncio.run(fetch()).to_json())
        collateral = Collateral.from_json({"tdx": fetched})
        assert collateral.tdx is not None
        return collateral.tdx

    def _current(self, collateral: Collateral) -> bool:
        until = collateral.next_update()
        return until is not None and self._clock() < until - REFRESH_MARGIN

    def _path(self, key: str) -> Path:
        return self._folder / f"{key}.json"

    def _read(self, key: str) -> Collateral | None:
        try:
            return Collateral.from_json(json.loads(self._path(key).read_text()))
        except (OSError, ValueError, VerificationError):
            return None

    def _write(self, key: str, collateral: Collateral) -> None:
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._path(key).with_suffix(".tmp")
        tmp.write_text(json.dumps(collateral.to_json()))
        os.replace(tmp, self._path(key))
