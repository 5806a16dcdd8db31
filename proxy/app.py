"""`cloister proxy`: the plaintext OpenAI API on localhost, forwarded to the gateway
in the chosen dialect (Oblivious HTTP by default).

The user's own machine is the only place the prompt exists in plaintext outside the
enclave: this process seals each request to the gateway's key and opens each response
(streamed completions chunk by chunk). Model `latest` resolves to the gateway's current
model. Errors of the proxy itself are OpenAI-shaped JSON with a stable code.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, Protocol
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from enclave.dialect import InnerResponse
from proxy import status_page
from proxy.client import InnerStream
from proxy.errors import ProxyError

# Local bodies are bounded like the gateway's: nothing larger would be accepted there.
MAX_LOCAL_BODY = 4 * 1024 * 1024
MODELS_TTL_SECONDS = 60.0


class UpstreamClient(Protocol):
    """What the proxy needs of a dialect's client (OHTTP, EHBP, ...)."""

    async def request(self, method: str, path: str, body: bytes = b"") -> InnerResponse: ...

    def stream(self, method: str, path: str, body: bytes = b""
               ) -> AbstractAsyncContextManager[InnerStream]: ...

    async def aclose(self) -> None: ...

    def gateways(self) -> list[Any]:
        """The gateway clients behind it (for the status page)."""


class ModelResolver:
    """Resolves model `latest` from the gateway's model list (cached briefly)."""

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client
        self._models: list[str] = []
        self._fetched = 0.0

    async def models(self) -> list[str]:
        if not self._models or time.monotonic() - self._fetched > MODELS_TTL_SECONDS:
            r = await self._client.request("GET", "/v1/models")
            self._models = [m["id"] for m in json.loads(r.body)["data"]]
            self._fetched = time.monotonic()
        return self._models

    async def resolve(self, path: str, model: Any) -> Any:
        if model != "latest":
            return model
        models = await self.models()
        if not models:
            return model
        # The gateway lists its generation model first and its embedding model last.
        return models[-1] if path == "/v1/embeddings" else models[0]


class LocalAnswer:
    """One answer as the local side passes it on: whole (`body`), or streamed
    (`chunks()`, which closes the upstream stream when it ends or is closed)."""

    def __init__(self, status: int, content_type: str, *, body: bytes = b"",
                 stream: AsyncIterator[bytes] | None = None) -> None:
        self.status, self.content_type, self.body, self._stream = (status, content_type,
                                                                   body, stream)

    @property
    def streamed(self) -> bool:
        return self._stream is not None

    def chunks(self) -> AsyncIterator[bytes]:
        assert self._stream is not None
        return self._stream

    @classmethod
    def error(cls, status: int, code: str, message: str) -> LocalAnswer:
        return cls(status, "application/json", body=json.dumps(
            {"error": {"message": message, "type": "proxy_error", "code": code,
                       "param": None}}).encode())


async def forward(client: UpstreamClient, models: ModelResolver, method: str, path: str,
                  body: bytes) -> LocalAnswer:
    """What `cloister proxy` and the in-process transport (`proxy.transport`) both do with
    one local request: resolve model `latest`, seal it, and open the authenticated answer.
    Errors of the proxy itself are OpenAI-shaped with a stable code."""
    try:
        if method == "GET":
            if path != "/v1/models":
                return LocalAnswer.error(404, "not_found", "no such route")
            r = await client.request("GET", "/v1/models")
            return LocalAnswer(r.status, r.content_type, body=r.body)
        if len(body) > MAX_LOCAL_BODY:
            return LocalAnswer.error(413, "body_too_large",
                                     f"request body exceeds {MAX_LOCAL_BODY} bytes")
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError
        except ValueError:
            return LocalAnswer.error(400, "invalid_json", "request body must be a JSON object")
        payload["model"] = await models.resolve(path, payload.get("model"))
        inner = json.dumps(payload).encode()
        if payload.get("stream") is True:
            return await _forward_stream(client, path, inner)
        r = await client.request("POST", path, inner)
    except ProxyError as exc:
        return LocalAnswer.error(502, exc.code, str(exc))
    return LocalAnswer(r.status, r.content_type, body=r.body)


async def _forward_stream(client: UpstreamClient, path: str, inner: bytes) -> LocalAnswer:
    stack = AsyncExitStack()
    stream = await stack.enter_async_context(client.stream("POST", path, inner))

    async def chunks() -> AsyncIterator[bytes]:
        # A truncated or tampered stream raises here, after some events went out: the
        # local connection is then cut without `data: [DONE]`, which SDKs report.
        async with stack:
            async for chunk in stream.chunks():
                yield chunk

    if stream.status >= 400:
        async with stack:
            content = b"".join([c async for c in stream.chunks()])
        return LocalAnswer(stream.status, stream.content_type, body=content)
    return LocalAnswer(stream.status, stream.content_type, stream=chunks())


async def _forward(request: Request) -> Response:
    answer = await forward(request.app.state.client, request.app.state.models,
                           request.method, request.url.path, await request.body())
    if answer.streamed:
        return StreamingResponse(answer.chunks(), status_code=answer.status,
                                 media_type=answer.content_type)
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type)


def _loopback_name(authority: str) -> bool:
    """Whether `authority` (a Host header, or an Origin's host and port) names this
    machine: `localhost` or a literal address. A web page can point a name it owns at
    127.0.0.1 (DNS rebinding) and reach the proxy as its own origin; it cannot make its
    name an address."""
    host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    if host.startswith("[") and "]" in host:
        host = host[1:host.index("]")]
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class LocalOnly:
    """What the local proxy takes: requests under a loopback name or an address, from no
    other origin than such a one, and POSTs of `application/json` only (a page on any
    site may send `text/plain` cross-site without asking first; JSON it must ask for,
    and the proxy does not answer CORS preflights)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(Headers(scope=scope), scope["method"])
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self._app(scope, receive, send)

    @staticmethod
    def _refusal(headers: Headers, method: str) -> Response | None:
        if not _loopback_name(headers.get("host", "")):
            return _local_error(403, "host_not_allowed", "the proxy answers only under "
                                "localhost or an address, not a name a web page may own")
        origin = headers.get("origin")
        if origin is not None and not _loopback_name(urlsplit(origin).netloc or "null"):
            return _local_error(403, "origin_not_allowed", "requests from web pages of other "
                                "origins are refused")
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if method == "POST" and media != "application/json":
            return _local_error(415, "unsupported_media_type",
                                "the body must be sent as application/json")
        return None


def _local_error(status: int, code: str, message: str) -> Response:
    answer = LocalAnswer.error(status, code, message)
    return Response(answer.body, status_code=status, media_type=answer.content_type)


def create_proxy_app(client: UpstreamClient) -> Starlette:
    routes = [
        Route("/v1/models", _forward, methods=["GET"]),
        Route("/v1/chat/completions", _forward, methods=["POST"]),
        Route("/v1/completions", _forward, methods=["POST"]),
        Route("/v1/embeddings", _forward, methods=["POST"]),
        *status_page.routes(),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(LocalOnly)])
    app.state.client = client
    app.state.models = ModelResolver(client)
    return app
