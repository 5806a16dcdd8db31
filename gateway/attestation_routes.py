"""`GET /v1/attestation/report`: the evidence document, three ways.

    ?nonce=<64 hex>      a fresh report over that nonce: a hardware quote, so rate-limited
                         per client address (a small burst, then one every few seconds;
                         429 with Retry-After past that)
    ?challenge=<64 hex>  the report cached for the current key epoch plus the attested
                         challenge key's signature over the challenge
                         (`attestation.challenge`): cheap, not rate-limited
    (neither)            the cached report alone, for clients that only need to know
                         which keys the hardware vouches for

Reports are collected on a small pool of their own threads, so one slow quote holds one
worker and never the event loop or other report requests; past `MAX_PENDING` reports
in progress, new fresh ones get 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.requests import Request
from starlette.responses import Response

from attestation import binding, challenge, evidence
from attestation.collateral import CollateralSource
from attestation.providers import CpuProvider, GpuProvider, ProviderError
from enclave.keys import KeyRing
from enclave.wire_errors import ErrorCode
from gateway.errors import GatewayError
from gateway.limits import RateBuckets
from gateway.metrics import GatewayMetrics

PATH = "/v1/attestation/report"
REFERENCE_VALUES_PATH = "/v1/attestation/reference-values"
# Fresh-nonce reports per client address: bursts of three, then one every five seconds.
FRESH_PER_SECOND = 0.2
FRESH_BURST = 3
# Reports collected at once, and in progress at most (the rest are turned away).
COLLECTORS = 4
MAX_PENDING = 16
# How long the evidence a joining process shows a keyholder is valid.
PROOF_SECONDS = 300


@dataclass(frozen=True)
class Attested:
    """What the gateway's evidence comes from: its providers and its workload manifest."""

    cpu: CpuProvider
    gpu: GpuProvider
    collateral: CollateralSource
    workload: dict[str, Any]
    init_data: bytes | None = None  # when the launch pin is an init-data document's hash
    # Signed release statements the operator installed (served as they are: their
    # signatures, not this gateway, are what clients trust).
    statements: tuple[bytes, ...] = ()

    def document(self, *, nonce: bytes, keys: dict[str, bytes], expires_at: int,
                 now: int) -> bytes:
        """An evidence document over `nonce` binding `keys` (blocking: the hardware)."""
        return evidence.collect(self.cpu, self.gpu, keys=keys, workload=self.workload,
                                nonce=nonce, expires_at=expires_at, now=now,
                                init_data=self.init_data,
                                collateral=self.collateral).to_json()

    async def prove(self, nonce: bytes, keys: dict[str, bytes]) -> bytes:
        """This process's evidence for a keyholder (`proxy.join`), valid five minutes."""
        now = int(time.time())
        return await asyncio.to_thread(self.document, nonce=nonce, keys=keys,
                                       expires_at=now + PROOF_SECONDS, now=now)


class ReportService:
    """`bound_keys` answers every public key the gateway accepts traffic for (the merge
    of its dialects' published keys, and the TLS key's SPKI hash); the service adds its
    challenge key to them."""

    def __init__(self, attested: Attested, keyring: KeyRing,
                 bound_keys: Callable[[], dict[str, bytes]], *,
                 fresh_per_second: float = FRESH_PER_SECOND, burst: int = FRESH_BURST,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time) -> None:
        """`clock` paces the rate limits; `now` is the wall clock reports are dated by."""
        self._attested, self._keyring, self._dialect_keys = attested, keyring, bound_keys
        self._now = now
        self._buckets = RateBuckets(rate=fresh_per_second, burst=burst, clock=clock)
        self._challenge_key = ed25519.Ed25519PrivateKey.generate()
        self._challenge_public = self._challenge_key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=COLLECTORS, thread_name_prefix="cloister-evidence")
        self._pending = 0
        self._collecting: set[str] = set()  # clients whose fresh report is being made
        self._cache: tuple[int, bytes] | None = None
        self._cache_lock = asyncio.Lock()

    @property
    def platform(self) -> str:
        return self._attested.cpu.platform

    def bound_keys(self) -> dict[str, bytes]:
        return {**self._dialect_keys(), challenge.CHALLENGE_KEY: self._challenge_public}

    async def _collect(self, nonce: bytes | None) -> bytes:
        if self._pending >= MAX_PENDING:
            raise GatewayError(ErrorCode.OVERLOADED, "too many attestation reports in "
                               "progress; retry later", headers={"Retry-After": "1"})
        keys = self.bound_keys()
        nonce = nonce if nonce is not None else binding.keys_digest(keys)
        work = functools.partial(self._attested.document, keys=keys, nonce=nonce,
                                 expires_at=int(self._keyring.expires_at()),
                                 now=int(self._now()))
        self._pending += 1
        try:
            doc = await asyncio.get_running_loop().run_in_executor(self._pool, work)
        except (ProviderError, OSError) as exc:  # the hardware or its driver, failing
            raise GatewayError(ErrorCode.ATTESTATION_UNAVAILABLE,
                               "attestation evidence is unavailable") from exc
        finally:
            self._pending -= 1
        return doc

    async def cached(self) -> bytes:
        async with self._cache_lock:
            self._keyring.rotate_if_due()
            epoch = self._keyring.epoch
            if self._cache is None or self._cache[0] != epoch:
                self._cache = (epoch, await self._collect(None))
            return self._cache[1]

    async def fresh(self, nonce: bytes, client: str) -> bytes:
        """A report over `nonce`, within `client`'s rate and one at a time per client
        (one address cannot hold every collector)."""
        wait = self._buckets.take(client)
        if wait is not None or client in self._collecting:
            raise GatewayError(ErrorCode.RATE_LIMITED,
                               "too many fresh attestation reports; retry later",
                               headers={"Retry-After": str(wait or 1)})
        self._collecting.add(client)
        try:
            return await self._collect(nonce)
        finally:
            self._collecting.discard(client)

    async def answer(self, nonce: bytes) -> bytes:
        """The cached report and the challenge key's signature over `nonce`."""
        document = await self.cached()
        return challenge.answer(self._challenge_key, nonce, document, int(self._now()))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _nonce(request: Request, name: str) -> bytes:
    try:
        value = bytes.fromhex(request.query_params[name])
    except ValueError:
        value = b""
    if len(value) != binding.NONCE_SIZE:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"{name} must be 64 hex digits",
                           param=name)
    return value


def report_endpoint(service: ReportService | None, metrics: GatewayMetrics
                    ) -> Callable[[Request], Awaitable[Response]]:
    async def report(request: Request) -> Response:
        if service is None:
            raise GatewayError(ErrorCode.ATTESTATION_UNAVAILABLE,
                               "this gateway was started without attestation")
        params = request.query_params
        if "nonce" in params:
            nonce = _nonce(request, "nonce")
            client = request.client.host if request.client else "unknown"
            with metrics.attestation_latency.time():
                body = await service.fresh(nonce, client)
            metrics.attestation_reports.labels("fresh").inc()
        elif "challenge" in params:
            body = await service.answer(_nonce(request, "challenge"))
            metrics.attestation_reports.labels("challenge").inc()
        else:
            body = await service.cached()
            metrics.attestation_reports.labels("cached").inc()
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
