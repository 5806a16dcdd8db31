"""One request to the engine, and the client connection it is for.

`EngineCall` owns the watch on the client's side of the connection: once the body is
read, a task waits for `http.disconnect`; the engine sees it (and aborts its request)
whether the client leaves before the first byte or mid-stream. `close()` stops the
watch; the endpoint calls it in a `finally`, so no watch outlives its request.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import Receive

from enclave.engine import Engine, EngineRequest, EngineResponse, call_engine
from enclave.wire_errors import ErrorCode
from gateway.errors import GatewayError


class ClientGone(GatewayError):
    """The client left before the engine answered; nobody is there to answer."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.CLIENT_GONE, "the client closed the connection")


class EngineCall:
    def __init__(self, engine: Engine, receive: Receive) -> None:
        self._engine = engine
        self._receive = receive
        self.gone = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self.answer: EngineResponse | None = None

    async def start(self, request: EngineRequest) -> EngineResponse:
        """Start `request` on the engine; its answer's head is known on return. A whole
        (non-streamed) answer's head comes only when it is complete: a client that leaves
        before then cancels the engine's work (vLLM aborts the request) and this raises
        `ClientGone`."""
        self._watch = asyncio.create_task(self._watch_client())
        calling = asyncio.ensure_future(call_engine(self._engine, request,
                                                    wait_for_disconnect=self._client_gone))
        leaving = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({calling, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
        if not calling.done():
            calling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await calling
            raise ClientGone()
        self.answer = calling.result()
        return self.answer

    async def _client_gone(self) -> None:
        await self.gone.wait()

    async def _watch_client(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return

    async def close(self) -> None:
        """Stop the engine's work if it is still going, and the watch."""
        if self.answer is not None:
            await self.answer.aclose()
        if self._watch is not None:
            self._watch.cancel()
