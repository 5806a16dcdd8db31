"""Limits and overload: decided before any decryption work, so floods cost little.

    Admission            per-client concurrency (429) and gateway-wide capacity or a full
                         engine queue (503 with Retry-After), asked by the engine endpoint
                         before it reads a body
    RateBuckets          a token bucket per client (fresh attestation reports, secret
                         registrations)
    client_key           who a request counts against: its API key, else its address
Body size and body read time are bounded in `gateway.body`; the output a request may ask
for (`--max-tokens`, in every form vLLM accepts) in `gateway.sampling`.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from enclave.wire_errors import ErrorCode
from gateway.errors import GatewayError

log = structlog.get_logger("cloister.gateway")

# Seconds a refused client is asked to wait: long enough to shed a burst.
RETRY_AFTER_SECONDS = 2


class Admission:
    """Counts engine-bound requests, gateway-wide and per client address."""

    def __init__(self, *, max_in_flight: int, max_per_client: int, max_engine_queue: int
                 ) -> None:
        self.max_in_flight = max_in_flight
        self.max_per_client = max_per_client
        self.max_engine_queue = max_engine_queue
        self.in_flight = 0
        self.per_client: Counter[str] = Counter()

    def refusal(self, client: str, engine_queue: int) -> GatewayError | None:
        """Why a new request from `client` is refused now, or None."""
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if self.per_client[client] >= self.max_per_client:
            return GatewayError(ErrorCode.RATE_LIMITED,
                                "too many concurrent requests from this client", headers=retry)
        if self.in_flight >= self.max_in_flight or engine_queue >= self.max_engine_queue:
            return GatewayError(ErrorCode.OVERLOADED, "the gateway is at capacity; retry later",
                                headers=retry)
        return None

    @contextlib.contextmanager
    def admitted(self, client: str) -> Iterator[None]:
        self.in_flight += 1
        self.per_client[client] += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]


def client_key(scope: Any) -> str:
    """Whom a request counts against before anything about it is authenticated: its
    address (the socket's, or the forwarded one from a front the operator named with
    `--forwarded-allow-ips`). A credential it carries names no one until a route has
    checked it (made-up `Bearer` values would otherwise each be a client of their own);
    an authenticated key is then held to its budget (`gateway.platform_routes`)."""
    return str((scope.get("client") or ("unknown", 0))[0])


class UntrustedForwarding:
    """Says once when requests carry `X-Forwarded-For` and no front is trusted: behind a
    balancer the operator did not name (`--forwarded-allow-ips`), every client is the
    balancer's address, one client."""

    def __init__(self, *, trusted: bool) -> None:
        self._quiet = trusted

    def notice(self, scope: Any) -> None:
        if self._quiet or not any(name == b"x-forwarded-for"
                                  for name, _ in scope.get("headers") or ()):
            return
        self._quiet = True
        log.warning("forwarded_for_untrusted", detail="requests carry X-Forwarded-For but "
                    "--forwarded-allow-ips is not set: every client behind that front counts "
                    "as one")


class RateBuckets:
    """`rate` a second per client on average, bursts of `burst`; the least recently seen
    clients are forgotten past `max_clients` (a forgotten client starts with a full
    bucket, which costs it nothing it could not have had by waiting)."""

    def __init__(self, *, rate: float, burst: int, max_clients: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._max, self._clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> int | None:
        """None if `client` may go ahead now; else the seconds to wait (Retry-After)."""
        now = self._clock()
        tokens, last = self._buckets.pop(client, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - last) * self._rate)
        wait = None
        if tokens < 1:
            wait = max(1, int((1 - tokens) / self._rate + 0.999))
        else:
            tokens -= 1
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait
