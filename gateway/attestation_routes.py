"""`GET /v1/attestation/report[?nonce=<64 hex>]`: the evidence document.

With a nonce: a fresh report over that nonce (rate-limited: a TDX quote can take
seconds). Without one: a report cached per key epoch, over a nonce derived from the
keys, for clients that only need to know which keys the hardware vouches for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from attestation import binding, evidence
from attestation.providers import CpuProvider, GpuProvider, ProviderError
from enclave.keys import KeyRing
from enclave.wire_errors import ErrorCode
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics

PATH = "/v1/attestation/report"
REFERENCE_VALUES_PATH = "/v1/attestation/reference-values"
# Fresh-nonce reports: one a second on average, bursts of five.
FRESH_PER_SECOND = 1.0
FRESH_BURST = 5


@dataclass(frozen=True)
class Attested:
    """What the gateway's evidence comes from: its providers and its workload manifest."""

    cpu: CpuProvider
    gpu: GpuProvider
    workload: dict[str, Any]
    init_data: bytes | None = None  # when the launch pin is an init-data document's hash
    # Signed release statements the operator installed (served as they are: their
    # signatures, not this gateway, are what clients trust).
    statements: tuple[bytes, ...] = ()


class ReportService:
    """`bound_keys` answers every public key the gateway accepts traffic for (the merge
    of its dialects' published keys, and the TLS key's SPKI hash)."""

    def __init__(self, attested: Attested, keyring: KeyRing,
                 bound_keys: Callable[[], dict[str, bytes]], *,
                 fresh_per_second: float = FRESH_PER_SECOND, burst: int = FRESH_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cpu, self._gpu, self._keyring = attested.cpu, attested.gpu, keyring
        self._workload, self._init_data = attested.workload, attested.init_data
        self.bound_keys = bound_keys
        self._rate, self._burst, self._clock = fresh_per_second, burst, clock
        self._tokens = float(burst)
        self._last = clock()
        self._cache: tuple[int, bytes] | None = None
        self._lock = asyncio.Lock()

    @property
    def platform(self) -> str:
        return self._cpu.platform

    async def _collect(self, nonce: bytes | None) -> bytes:
        keys = self.bound_keys()
        nonce = nonce if nonce is not None else binding.keys_digest(keys)
        expires = int(self._keyring.expires_at())
        try:
            doc = await asyncio.to_thread(evidence.collect, self._cpu, self._gpu, keys=keys,
                                          workload=self._workload, nonce=nonce,
                                          expires_at=expires, now=int(time.time()),
                                          init_data=self._init_data)
        except ProviderError as exc:
            raise GatewayError(ErrorCode.ATTESTATION_UNAVAILABLE,
                               "attestation evidence is unavailable") from exc
        return doc.to_json()

    async def cached(self) -> bytes:
        async with self._lock:
            self._keyring.rotate_if_due()
            epoch = self._keyring.epoch
            if self._cache is None or self._cache[0] != epoch:
                self._cache = (epoch, await self._collect(None))
            return self._cache[1]

    async def fresh(self, nonce: bytes) -> bytes:
        self._take_token()
        return await self._collect(nonce)

    def _take_token(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            wait = max(1, int((1 - self._tokens) / self._rate + 0.999))
            raise GatewayError(ErrorCode.RATE_LIMITED,
                               "too many fresh attestation reports; retry later",
                               headers={"Retry-After": str(wait)})
        self._tokens -= 1


def report_endpoint(service: ReportService | None, metrics: GatewayMetrics
                    ) -> Callable[[Request], Awaitable[Response]]:
    async def report(request: Request) -> Response:
        if service is None:
            raise GatewayError(ErrorCode.ATTESTATION_UNAVAILABLE,
                               "this gateway was started without attestation")
        nonce_hex = request.query_params.get("nonce")
        if nonce_hex is None:
            body = await service.cached()
            metrics.attestation_reports.labels("cached").inc()
        else:
            try:
                nonce = bytes.fromhex(nonce_hex)
            except ValueError:
                nonce = b""
            if len(nonce) != binding.NONCE_SIZE:
                raise GatewayError(ErrorCode.INVALID_REQUEST, "nonce must be 64 hex digits",
                                   param="nonce")
            with metrics.attestation_latency.time():
                body = await service.fresh(nonce)
            metrics.attestation_reports.labels("fresh").inc()
        return Response(body, media_type="application/json",
                        headers={"cache-control": "no-store"})

    return report


def reference_values_endpoint(attested: Attested | None
                              ) -> Callable[[Request], Awaitable[Response]]:
    """`GET /v1/attestation/reference-values`: {"statements": [DSSE envelope, ...]}."""
    body = json.dumps({"statements": [json.loads(s) for s in
                                      (attested.statements if attested else ())]}).encode()

    async def reference_values(request: Request) -> Response:
        return Response(body, media_type="application/json",
                        headers={"cache-control": "max-age=60"})

    return reference_values
