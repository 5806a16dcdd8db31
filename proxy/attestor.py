"""Verify the gateway before anything is sent to it.

`Attestor` fetches `GET /v1/attestation/report` with a fresh nonce, verifies the
document (hardware signatures, pinned roots, binding, freshness, policy) and asks the
dialect whether the keys it is about to use are among those the hardware vouches for.
The client calls it before its first request and again whenever it refetches keys
(rotation), so a key that no report covers is never used. `Unverified` is the explicit,
loudly named alternative for development (`--insecure-skip-attestation`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Protocol

import httpx

from attestation.errors import VerificationError
from attestation.verify import Policy, TrustRoots, VerifiedEvidence, new_nonce, verify_evidence
from proxy.errors import GatewayNotAttested

REPORT_PATH = "/v1/attestation/report"
# How long a verifying client waits, in all, on a rate-limited report before giving up.
MAX_RATE_LIMIT_WAIT = 10.0
KeyCheck = Callable[[VerifiedEvidence], bool]


class Attestation(Protocol):
    """How a client decides to trust the keys it fetched."""

    last: VerifiedEvidence | None

    async def verify(self, vouches: KeyCheck) -> None:
        """Raise `GatewayNotAttested` unless the gateway's report verifies and
        `vouches(claims)` holds."""

    async def aclose(self) -> None: ...


async def _fetch_report(http: httpx.AsyncClient, nonce: bytes) -> httpx.Response:
    """The report for `nonce`; a `429` is retried after the `Retry-After` the gateway
    sends, within `MAX_RATE_LIMIT_WAIT` seconds in all."""
    waited = 0.0
    while True:
        try:
            r = await http.get(REPORT_PATH, params={"nonce": nonce.hex()})
        except httpx.TransportError as exc:
            raise GatewayNotAttested("cannot fetch the attestation report") from exc
        try:
            delay = float(r.headers.get("retry-after", "1"))
        except ValueError:
            delay = 1.0
        delay = min(max(delay, 0.1), MAX_RATE_LIMIT_WAIT)
        if r.status_code != 429 or waited + delay > MAX_RATE_LIMIT_WAIT:
            return r
        await asyncio.sleep(delay)
        waited += delay


async def fetch_and_verify(http: httpx.AsyncClient, *, roots: TrustRoots, policy: Policy,
                           nonce: bytes | None = None) -> VerifiedEvidence:
    nonce = nonce or new_nonce()
    r = await _fetch_report(http, nonce)
    if r.status_code != 200:
        raise GatewayNotAttested(f"the gateway gave no attestation report (HTTP {r.status_code})",
                                 outer_status=r.status_code)
    try:
        return verify_evidence(r.content, expected_nonce=nonce, roots=roots, policy=policy,
                               now=dt.datetime.now(dt.UTC))
    except VerificationError as exc:
        raise GatewayNotAttested(f"attestation failed: {exc}") from exc


class Attestor:
    def __init__(self, gateway_url: str, *, roots: TrustRoots, policy: Policy,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=gateway_url.rstrip("/"), transport=transport,
                                       timeout=60)
        self._roots, self._policy = roots, policy
        self.last: VerifiedEvidence | None = None

    async def verify(self, vouches: KeyCheck) -> None:
        claims = await fetch_and_verify(self._http, roots=self._roots, policy=self._policy)
        if not vouches(claims):
            raise GatewayNotAttested("the gateway's keys are not the attested ones")
        self.last = claims

    async def aclose(self) -> None:
        await self._http.aclose()


class Unverified:
    """DEVELOPMENT ONLY: trusts whatever keys the gateway (or anyone in between) sends."""

    last: VerifiedEvidence | None = None

    async def verify(self, vouches: KeyCheck) -> None:
        return None

    async def aclose(self) -> None:
        return None
