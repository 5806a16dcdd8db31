"""Limits and overload: decided before any decryption work, so floods cost little.

    Admission            per-client concurrency (429) and gateway-wide capacity or a full
                         engine queue (503 with Retry-After), asked by the engine endpoint
                         before it reads a body
    RateBuckets          a token bucket per client address (fresh attestation reports)
    TokenLimitedEngine   refuses max_tokens above the configured cap with an OpenAI-shaped
                         400 from the engine's side, so every dialect seals it like any
                         other engine answer
Body size and body read time are bounded in `gateway.body`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from enclave.engine import Engine
from enclave.wire_errors import ErrorCode
from gateway.errors import GatewayError

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


class TokenLimitedEngine:
    """An `Engine` that refuses requests for more than `max_tokens` output tokens."""

    def __init__(self, engine: Engine, max_tokens: int) -> None:
        self._engine = engine
        self._max = max_tokens

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            return await self._engine(scope, receive, send)
        message = await receive()
        asked = _asked_tokens(message.get("body", b""))
        if asked is not None and asked > self._max:
            body = json.dumps({"error": {
                "message": f"max_tokens must be at most {self._max}", "type": "BadRequestError",
                "param": "max_tokens", "code": 400}}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        await self._engine(scope, replay, send)

    async def check_health(self) -> None:
        await self._engine.check_health()

    def unfinished_requests(self) -> int:
        return self._engine.unfinished_requests()

    def model_names(self) -> list[str]:
        return self._engine.model_names()


def _asked_tokens(body: bytes) -> int | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    values = [payload.get(k) for k in ("max_tokens", "max_completion_tokens")]
    numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return max(numbers) if numbers else None
