"""Hand an opened (plaintext) request to the engine and send its answer back.

This is the dialect-independent middle of DESIGN section 2 on the gateway side. A
dialect supplies how each body chunk leaves the enclave (`seal_chunk`, identity for the
development plaintext channel) and what ends a stream (`seal_end`); the engine's answer
is relayed chunk by chunk as it is produced, never buffered to the end.

A client that goes away is noticed while the engine works, before the first byte as
well as mid-stream, and the engine request is aborted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from enclave.engine import Engine, EngineRequest, EngineResponse, call_engine
from gateway.errors import normalize_engine_error
from gateway.metrics import dialect_of

# Headers of the engine's answer that describe its own framing and must not be relayed.
_HOP_HEADERS = {b"content-length", b"transfer-encoding", b"connection"}


class DisconnectWatcher:
    """Watches the client's side of the connection once its body has been read."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.gone = asyncio.Event()
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return

    async def wait(self) -> None:
        await self.gone.wait()

    def close(self) -> None:
        self._task.cancel()


class RelayResponse:
    """An ASGI response that relays an engine answer, transformed chunk by chunk."""

    def __init__(
        self,
        answer: EngineResponse,
        watcher: DisconnectWatcher,
        *,
        status: int | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        seal_chunk: Callable[[bytes], bytes] = bytes,
        seal_end: Callable[[], bytes] = bytes,
        prefix: bytes = b"",
    ) -> None:
        self.answer = answer
        self.watcher = watcher
        self.status = answer.status if status is None else status
        self.headers = headers if headers is not None else [
            (k, v) for k, v in answer.headers if k.lower() not in _HOP_HEADERS
        ]
        self.seal_chunk = seal_chunk
        self.seal_end = seal_end
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = scope["app"].state.metrics
        dialect = dialect_of(scope)
        # Labelled children looked up once per response, not once per chunk (hot path).
        chunk_count, ttft = metrics.chunks.labels(dialect), metrics.ttft.labels(dialect)
        started = (scope.get("state") or {}).get("started_at", time.perf_counter())
        first = True
        try:
            await send({"type": "http.response.start", "status": self.status,
                        "headers": self.headers})
            if self.prefix:
                await send({"type": "http.response.body", "body": self.prefix,
                            "more_body": True})
            async for chunk in self.answer.chunks():
                if self.watcher.gone.is_set():
                    break
                await send({"type": "http.response.body", "body": self.seal_chunk(chunk),
                            "more_body": True})
                chunk_count.inc()
                if first:
                    ttft.observe(time.perf_counter() - started)
                    first = False
            if not self.watcher.gone.is_set():
                await send({"type": "http.response.body", "body": self.seal_end()})
        except OSError:
            pass  # the client went away while we were writing (ASGI spec 2.4)
        finally:
            await self.answer.aclose()
            self.watcher.close()


async def forward(engine: Engine, request: Request, inner: EngineRequest) -> EngineResponse:
    """Start `inner` on the engine; the caller relays the answer (see `relay`)."""
    watcher = DisconnectWatcher(request.receive)
    request.state.disconnect_watcher = watcher
    try:
        return await call_engine(engine, inner, wait_for_disconnect=watcher.wait)
    except BaseException:
        watcher.close()
        raise


async def read_whole(request: Request, answer: EngineResponse) -> bytes:
    """The engine's whole answer, for dialects that send one message; stops watching
    the client afterwards (there is nothing left to abort)."""
    try:
        return await answer.read()
    finally:
        request.state.disconnect_watcher.close()


async def relay_plaintext(request: Request, answer: EngineResponse) -> ASGIApp:
    """The development plaintext channel: the engine's answer as it is, errors normalized."""
    watcher: DisconnectWatcher = request.state.disconnect_watcher
    if answer.status >= 400 and not answer.is_event_stream:
        body = normalize_engine_error(answer.status, await read_whole(request, answer))
        return Response(body, status_code=answer.status, media_type="application/json")
    return RelayResponse(answer, watcher)
