"""Limits and overload: decided before any decryption work, so floods cost little.

    Admission            per-client concurrency (429) and gateway-wide capacity or a full
                         engine queue (503 with Retry-After), asked by the engine endpoint
                         before it reads a body
    TokenLimitedEngine   refuses max_tokens above the configured cap with an OpenAI-shaped
                         400 from the engine's side, so every dialect seals it like any
                         other engine answer
Body size and body read time are bounded in `gateway.body`.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
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
