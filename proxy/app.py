"""`cloister proxy`: the plaintext OpenAI API on localhost, forwarded to the gateway
in the chosen dialect (Oblivious HTTP by default).

The user's own machine is the only place the prompt exists in plaintext outside the
enclave: this process seals each request to the gateway's key and opens each response
(streamed completions chunk by chunk). Model `latest` resolves to the gateway's current
model. Errors of the proxy itself are OpenAI-shaped JSON with a stable code.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from enclave.dialect import InnerResponse
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


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "proxy_error", "code": code,
                                   "param": None}}, status_code=status)


def _gateway_error(exc: ProxyError) -> JSONResponse:
    return _error(502, exc.code, str(exc))


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


async def _forward(request: Request) -> Response:
    client: UpstreamClient = request.app.state.client
    body = await request.body()
    if len(body) > MAX_LOCAL_BODY:
        return _error(413, "body_too_large", f"request body exceeds {MAX_LOCAL_BODY} bytes")
    try:
        payload = json.loads(body)
        if not isinstance(payload, dict):
            raise ValueError
    except ValueError:
        return _error(400, "invalid_json", "request body must be a JSON object")
    try:
        payload["model"] = await request.app.state.models.resolve(
            request.url.path, payload.get("model"))
        inner = json.dumps(payload).encode()
        if payload.get("stream") is True:
            return await _forward_stream(request, client, inner)
        r = await client.request("POST", request.url.path, inner)
    except ProxyError as exc:
        return _gateway_error(exc)
    return Response(r.body, status_code=r.status, media_type=r.content_type)


async def _forward_stream(request: Request, client: UpstreamClient, inner: bytes) -> Response:
    stack = AsyncExitStack()
    stream = await stack.enter_async_context(client.stream("POST", request.url.path, inner))
    media_type = stream.content_type

    async def body() -> AsyncIterator[bytes]:
        # A truncated or tampered stream raises here, after some events went out: the
        # local connection is then cut without `data: [DONE]`, which SDKs report.
        async with stack:
            async for chunk in stream.chunks():
                yield chunk

    if stream.status >= 400:
        async with stack:
            content = b"".join([c async for c in stream.chunks()])
        return Response(content, status_code=stream.status, media_type=media_type)
    return StreamingResponse(body(), status_code=stream.status, media_type=media_type)


async def _models(request: Request) -> Response:
    try:
        r = await request.app.state.client.request("GET", "/v1/models")
    except ProxyError as exc:
        return _gateway_error(exc)
    return Response(r.body, status_code=r.status, media_type=r.content_type)


def create_proxy_app(client: UpstreamClient) -> Starlette:
    routes = [
        Route("/v1/models", _models, methods=["GET"]),
        Route("/v1/chat/completions", _forward, methods=["POST"]),
        Route("/v1/completions", _forward, methods=["POST"]),
        Route("/v1/embeddings", _forward, methods=["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.client = client
    app.state.models = ModelResolver(client)
    return app
