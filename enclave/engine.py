"""The middle of the request path: plaintext OpenAI requests in, OpenAI responses out.

Every dialect ends here once it has opened a request, and never sees the engine beyond
this interface; the engine never sees ciphertext (DESIGN section 2). An engine is an ASGI
app that serves exactly the allow-listed OpenAI routes below, so the production engine
can be vLLM's own OpenAI app run in-process and a test double can be a tiny Starlette app
with the same wire shape.

`call_engine` runs one request through that app in-process (no socket, no HTTP hop) and
hands back the status, headers and body chunks as the app produces them, which is what a
dialect needs to seal a streamed response event by event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The only (method, path) pairs an engine is asked to serve. vLLM's app has many more
# (LoRA loading, tokenizer, dev routes); none of them is reachable through the gateway.
CHAT = ("POST", "/v1/chat/completions")
COMPLETIONS = ("POST", "/v1/completions")
EMBEDDINGS = ("POST", "/v1/embeddings")
MODELS = ("GET", "/v1/models")
ENGINE_ROUTES = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, MODELS})
PROMPT_ROUTES = (CHAT, COMPLETIONS, EMBEDDINGS)  # the ones that carry a prompt
ENGINE_AHEAD = 32
PAYLOAD_SCOPE_KEY = "cloister.payload"


class EngineDead(Exception):
    """The engine is gone for good (its process died): only a restart brings it back.
    `check_health` raises it; any other exception there means not ready (yet)."""


class Engine(Protocol):
    """What the gateway needs from an inference engine."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one allow-listed OpenAI route (ASGI)."""

    async def check_health(self) -> None:
        """Raise if the engine cannot serve requests."""

    def unfinished_requests(self) -> int:
        """Requests the engine has accepted and not yet finished or aborted."""

    def model_names(self) -> list[str]:
        """Served model names, the default first."""


@dataclass(frozen=True)
class EngineRequest:
    """A plaintext OpenAI request, as a dialect hands it to the engine."""

    method: str
    path: str
    body: bytes = b""
    request_id: str | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()
    # The body's JSON where the gateway already parsed it: an engine that reads
    # `scope["cloister.payload"]` need not parse the body again (vLLM's adapter does).
    payload: Any = None

    def scope(self) -> Scope:
        headers = [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(self.body)).encode()))
        if self.request_id:
            headers.append((b"x-request-id", self.request_id.encode()))
        headers += [(k.lower().encode(), v.encode()) for k, v in self.extra_headers]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": ("engine.internal", 80),
            PAYLOAD_SCOPE_KEY: self.payload,
        }


@dataclass
class EngineResponse:
    """The engine's answer: status and headers first, then body chunks as produced.

    For `text/event-stream` responses each chunk is one or more complete SSE events
    (vLLM sends one `data: ...\\n\\n` event per body message).
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    _queue: asyncio.Queue[Message | BaseException]
    _task: asyncio.Task[None]
    _done: bool = field(default=False)

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name.lower() == b"content-type":
                return value.decode("latin-1")
        return ""

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield body chunks until the engine says there are no more.

        When the engine has run ahead of the client, everything already queued is yielded
        as one chunk (in order): under load a dialect then seals and sends several SSE
        events in one AEAD operation and one write instead of one each.
        """
        pending: BaseException | None = None
        try:
            while not self._done:
                if pending is not None:
                    raise pending
                parts = []
                item: Message | BaseException = await self._queue.get()
                while True:
                    if isinstance(item, BaseException):
                        pending = item
                        break
                    self._done = not item.get("more_body", False)
                    parts.append(item.get("body", b""))
                    if self._done or self._queue.empty():
                        break
                    item = self._queue.get_nowait()
                body = b"".join(parts)
                if body:
                    yield body
            if pending is not None:
                raise pending
        finally:
            if not self._done:
                await self.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        """Stop the engine request (a client went away): the engine aborts it."""
        self._done = True
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


async def call_engine(
    app: Engine | Callable[[Scope, Receive, Send], Awaitable[None]],
    request: EngineRequest,
    *,
    wait_for_disconnect: Callable[[], Awaitable[None]] | None = None,
) -> EngineResponse:
    """Run `request` through the engine app in this process.

    `wait_for_disconnect` returns when the outer client has gone away; the engine app
    then sees `http.disconnect` and aborts the engine request (vLLM's own cancellation
    path). Without it the request runs to completion unless the response is closed.
    """
    # The engine may run this many messages (SSE events) ahead of the client: enough to
    # coalesce events under load (see `EngineResponse.chunks`), few enough to bound memory.
    queue: asyncio.Queue[Message | BaseException] = asyncio.Queue(maxsize=ENGINE_AHEAD)
    started: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        if wait_for_disconnect is not None:
            await wait_for_disconnect()
        else:
            await asyncio.Event().wait()  # never: only cancellation ends it
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.set_result(message)
        elif message["type"] == "http.response.body":
            await queue.put(message)

    async def run() -> None:
        try:
            await app(request.scope(), receive, send)
        except BaseException as exc:  # handed to the reader, which re-raises it
            if not started.done():
                started.set_exception(exc)
            elif not isinstance(exc, asyncio.CancelledError):
                await queue.put(exc)
            raise
        finally:
            if started.done() and not started.cancelled():
                # the app returned without a final body message: close the stream
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait({"type": "http.response.body", "more_body": False})

    task = asyncio.create_task(run())
    task.add_done_callback(_consume_exception)
    try:
        start = await started
    except BaseException:
        task.cancel()
        raise
    return EngineResponse(
        status=int(start["status"]), headers=list(start.get("headers", [])), _queue=queue,
        _task=task,
    )


def _consume_exception(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
