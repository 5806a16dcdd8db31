"""The gateway's collateral for its own platform, fetched from the vendors and cached
until their next-update time, so every report carries it and clients verify offline.

Each platform says what its collateral is and where the vendor serves it
(`CpuPlatform.collateral_key`, `fetch_collateral`: Intel's PCS or a PCCS, `--pccs-url`;
AMD's KDS, `--amd-kds-url`). Here the gateway's cache and schedule: verifiers never do
network I/O. Cached in memory and in `folder` (a JSON file per platform and FMSPC or family) until
the earliest next-update of its parts, less `REFRESH_MARGIN`; the gateway renews it in
the background (`refresh`, every `REFRESH_EVERY`), so a report rarely waits on a vendor.
When a vendor cannot be reached, the last good copy is served: each client judges it by
its own clock and refuses it once it is stale. Only when nothing was ever fetched does the
report fail (`ProviderError`, 503 to clients).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx
import structlog
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from attestation.collateral import Collateral
from attestation.errors import VerificationError
from attestation.platforms import cpu_platform
from attestation.types import CpuEvidence, ProviderError

REFRESH_MARGIN = dt.timedelta(hours=1)
REFRESH_EVERY = 600.0  # seconds between background renewals
log = structlog.get_logger("cloister.collateral")
NVIDIA_OCSP_URL = "https://ocsp.ndis.nvidia.com"
FETCH_TIMEOUT = 15.0


class FetchedCollateral:
    def __init__(self, folder: Path, *, services: Mapping[str, str] | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        """`services`: a vendor's collateral service other than the platform's default
        ({"intel": a PCCS URL, "amd": a KDS mirror, "nvidia": an OCSP responder})."""
        self._folder = folder
        self._services = dict(services or {})
        self._clock = clock
        self._memory: dict[str, Collateral] = {}
        self._fetchers: dict[str, Callable[[], Collateral]] = {}  # what was asked for
        # One fetch at a time: a burst of reports after expiry makes one request, not many.
        self._lock = threading.Lock()

    def for_report(self, evidence: CpuEvidence) -> Collateral:
        return self._cached(*self._what(evidence))

    def for_gpus(self, chains: Sequence[bytes]) -> tuple[bytes, ...]:
        """NVIDIA's OCSP responses for each certificate below the root of each chain,
        cached per chain until the earliest next update."""
        out: list[bytes] = []
        for pem in chains:
            key = "gpu-ocsp-" + hashlib.sha256(pem).hexdigest()[:16]
            out += self._cached(key, functools.partial(self._ocsp, pem)).gpu_ocsp
        return tuple(out)

    def _ocsp(self, pem: bytes) -> Collateral:
        from attestation import ocsp
        from attestation.x509chain import load_pem_chain

        chain = load_pem_chain(pem)
        service = self._services.get("nvidia")
        return Collateral(gpu_ocsp=tuple(
            _post(service or _ocsp_url(cert) or NVIDIA_OCSP_URL, ocsp.request(cert, issuer))
            for cert, issuer in zip(chain, chain[1:], strict=False)))

    def refresh(self) -> None:
        """Renew every collateral asked for so far that is due (blocking: run it off the
        event loop); where a vendor fails, the last good copy stays."""
        for key, fetch in list(self._fetchers.items()):
            try:
                self._cached(key, fetch)
            except ProviderError as exc:
                log.warning("collateral_refresh_failed", detail=f"{key}: {exc}")

    def _cached(self, key: str, fetch: Callable[[], Collateral]) -> Collateral:
        with self._lock:
            self._fetchers.setdefault(key, fetch)
            known = self._memory.get(key) or self._read(key)
            if known is not None and self._current(known):
                self._memory[key] = known
                return known
            try:
                fresh = fetch()
                if not self._current(fresh):
                    raise ValueError("what the vendor serves is not current")
            except (httpx.HTTPError, ValueError, RuntimeError, OSError) as exc:
                if known is not None:  # the last good copy: clients judge it by their clock
                    log.warning("collateral_stale_served", detail=f"{key}: {exc}")
                    self._memory[key] = known
                    return known
                raise ProviderError(f"cannot fetch current collateral for {key}: {exc}"
                                    ) from exc
            self._memory[key] = fresh
            self._write(key, fresh)
            return fresh

    def _what(self, evidence: CpuEvidence) -> tuple[str, Callable[[], Collateral]]:
        try:
            platform = cpu_platform(evidence.platform)
        except VerificationError:
            raise ProviderError(f"no collateral for platform {evidence.platform!r}") from None
        service = self._services.get(platform.vendor, platform.collateral_service)
        return platform.collateral_key(evidence), lambda: platform.fetch_collateral(
            evidence, service, _get)

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


def _ocsp_url(cert: x509.Certificate) -> str | None:
    """The OCSP responder the certificate names (its Authority Information Access)."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return None
    return next((str(d.access_location.value) for d in access.value
                 if d.access_method == AuthorityInformationAccessOID.OCSP), None)


def _post(url: str, body: bytes) -> bytes:
    response = httpx.post(url, content=body, timeout=FETCH_TIMEOUT,
                          headers={"content-type": "application/ocsp-request"})
    response.raise_for_status()
    return response.content


def _get(url: str) -> bytes:
    response = httpx.get(url, timeout=FETCH_TIMEOUT)
    response.raise_for_status()
    return response.content
