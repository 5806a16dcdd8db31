"""Several gateways behind one proxy: requests spread round-robin, failover when one
stops answering.

Each gateway has its own client, and so its own keys and its own attestation check: a
gateway that cannot be verified is treated like one that does not answer. A gateway
that fails is skipped for `cooldown` seconds. A stream fails over only before its first
byte; once it has started, it ends with the gateway that serves it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from enclave.dialect import InnerResponse
from proxy.client import InnerStream
from proxy.errors import (
    GatewayKeyUnavailable,
    GatewayNotAttested,
    GatewayResponseInvalid,
    GatewayUnreachable,
    ProxyError,
)

# How long a failed gateway is left alone before it is tried again.
DEFAULT_COOLDOWN_SECONDS = 10.0
# Authenticated answers that mean "try another gateway": overloaded, not ready.
UNAVAILABLE = frozenset({429, 503})


def _is_failover(exc: ProxyError) -> bool:
    """Worth another gateway: unreachable, unverified, overloaded or not ready (an
    unauthenticated refusal is trusted for this only: it cannot make us send anything)."""
    if isinstance(exc, GatewayResponseInvalid):
        return exc.outer_status is not None and (exc.outer_status >= 500
                                                 or exc.outer_status == 429)
    return isinstance(exc, GatewayUnreachable | GatewayNotAttested | GatewayKeyUnavailable)


class MultiGatewayClient:
    def __init__(self, clients: Sequence[Any], *, cooldown: float = DEFAULT_COOLDOWN_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not clients:
            raise ValueError("at least one gateway is needed")
        self._clients = list(clients)
        self._down_until = [0.0] * len(clients)
        self._next = 0
        self._cooldown, self._clock = cooldown, clock

    def _order(self) -> list[int]:
        n = len(self._clients)
        start, self._next = self._next, (self._next + 1) % n
        order = [(start + i) % n for i in range(n)]
        now = self._clock()
        up = [i for i in order if self._down_until[i] <= now]
        return up or order  # all down: try them all anyway

    def _failed(self, index: int) -> None:
        self._down_until[index] = self._clock() + self._cooldown

    async def request(self, method: str, path: str, body: bytes = b"") -> InnerResponse:
        last: ProxyError | InnerResponse | None = None
        for index in self._order():
            try:
                answer: InnerResponse = await self._clients[index].request(method, path, body)
            except ProxyError as exc:
                if not _is_failover(exc):
                    raise
                self._failed(index)
                last = exc
                continue
            if answer.status not in UNAVAILABLE:
                return answer
            self._failed(index)  # it says (authenticated) it cannot serve now
            last = answer
        if isinstance(last, InnerResponse):
            return last
        assert last is not None
        raise last

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, body: bytes = b"") -> AsyncIterator[InnerStream]:
        last: ProxyError | None = None
        for index in self._order():
            opened = self._clients[index].stream(method, path, body)
            try:
                stream = await opened.__aenter__()
            except ProxyError as exc:
                if not _is_failover(exc):
                    raise
                self._failed(index)
                last = exc
                continue
            try:
                yield stream
            except BaseException as exc:
                if not await opened.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                await opened.__aexit__(None, None, None)
            return
        assert last is not None
        raise last

    def gateways(self) -> list[Any]:
        return list(self._clients)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
