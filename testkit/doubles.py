"""Test doubles. Nothing here ships: the gateway's only default engine is vLLM.

`DeterministicTestEngine` is a stand-in for the embedded vLLM engine with the same OpenAI
wire shape (JSON bodies, SSE events ending in `data: [DONE]`, vLLM-shaped errors) and
fully deterministic output, so that unit tests of the gateway and of every dialect run in
milliseconds and can assert exact bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from enclave.engine import EngineDead
from enclave.vllm_serving import relay_stream

CHAT_MODEL = "test-chat"
EMBEDDING_MODEL = "test-embed"
EMBEDDING_DIM = 384
MAX_MODEL_LEN = 2048


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}},
        status_code=status,
    )


def reply_words(prompt: str, max_tokens: int) -> list[str]:
    """The deterministic completion: `echo:` then the prompt's words, padded with `tick`."""
    words = ["echo:", *prompt.split()]
    words += ["tick"] * max(0, max_tokens - len(words))
    return words[:max_tokens]


def embedding_of(text: str) -> list[float]:
    digest = hashlib.sha512(text.encode()).digest()
    raw = [digest[i % len(digest)] - 127.5 for i in range(EMBEDDING_DIM)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


class DeterministicTestEngine:
    """Implements `enclave.engine.Engine` for tests."""

    def __init__(self, *, token_delay: float = 0.0) -> None:
        self.token_delay = token_delay
        # After this many streamed tokens the engine sets `paused` and waits until its
        # request is cancelled: tests then act on an event, not on a sleep.
        self.pause_after: int | None = None
        self.paused = asyncio.Event()
        self.unfinished = 0
        self.aborted = 0
        self.healthy = True
        self.killed = asyncio.Event()  # `kill()`: the engine process died
        self.health_checks = 0
        self.generating_whole = asyncio.Event()  # a non-streamed answer is being made
        self.seen_bodies: list[dict[str, Any]] = []
        # the gateway's own known-answer checks (`gateway.known_answer`), kept apart from
        # what the tests send: they touch none of the state above
        self.known_answer_bodies: list[dict[str, Any]] = []
        self._app = Starlette(routes=[
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
        ])

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if (b"x-request-id", b"known-answer") in scope.get("headers", []):
            await self._known_answer(scope, receive, send)
            return
        await self._app(scope, receive, send)

    async def _known_answer(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        body = json.loads((await receive())["body"])
        self.known_answer_bodies.append(body)
        words = reply_words(body["prompt"], int(body["max_tokens"]))
        for _ in range(len(words) if self.token_delay else 0):
            await asyncio.sleep(self.token_delay)
        answer = {"id": "cmpl-known-answer", "object": "text_completion", "model": CHAT_MODEL,
                  "created": 0, "choices": [{"index": 0, "text": " ".join(words),
                                             "logprobs": None, "finish_reason": "length"}],
                  "usage": {"prompt_tokens": len(body["prompt"].split()),
                            "completion_tokens": len(words),
                            "total_tokens": len(body["prompt"].split()) + len(words)}}
        await JSONResponse(answer)(scope, receive, send)

    def kill(self) -> None:
        """As if the engine core process were killed: streams in flight fail, and the
        health check says the engine is dead (not merely unready)."""
        self.killed.set()

    async def check_health(self) -> None:
        self.health_checks += 1
        if self.killed.is_set():
            raise EngineDead("killed")
        if not self.healthy:
            raise RuntimeError("engine unhealthy")

    def unfinished_requests(self) -> int:
        return self.unfinished

    def model_names(self) -> list[str]:
        return [CHAT_MODEL, EMBEDDING_MODEL]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DeterministicTestEngine]:
        """The factory shape the gateway expects: `lambda: engine.running()`."""
        yield self

    async def _models(self, request: Request) -> Response:
        cards = [{"id": name, "object": "model", "created": 0, "owned_by": "cloister-tests",
                  "max_model_len": MAX_MODEL_LEN} for name in self.model_names()]
        return JSONResponse({"object": "list", "data": cards})

    async def _body(self, request: Request, model: str) -> dict[str, Any] | Response:
        body = await request.json()
        self.seen_bodies.append(body)
        if body.get("model", model) != model:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "model")
        return body

    async def _chat(self, request: Request) -> Response:
        body = await self._body(request, CHAT_MODEL)
        if isinstance(body, Response):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return _error(400, "messages: Input should be a list of objects", "body.messages")
        prompt = " ".join(str(m.get("content", "")) for m in body["messages"])
        return await self._generate(body, prompt, chat=True)

    async def _completions(self, request: Request) -> Response:
        body = await self._body(request, CHAT_MODEL)
        if isinstance(body, Response):
            return body
        if not isinstance(body.get("prompt"), str):
            return _error(400, "prompt: Field required", "body.prompt")
        return await self._generate(body, body["prompt"], chat=False)

    async def _embeddings(self, request: Request) -> Response:
        body = await self._body(request, EMBEDDING_MODEL)
        if isinstance(body, Response):
            return body
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs:
            return _error(400, "input: Field required", "body.input")
        data = [{"object": "embedding", "index": i, "embedding": embedding_of(str(t))}
                for i, t in enumerate(inputs)]
        tokens = sum(len(str(t).split()) for t in inputs)
        return JSONResponse({"object": "list", "model": EMBEDDING_MODEL, "data": data,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _generate(self, body: dict[str, Any], prompt: str, *, chat: bool) -> Response:
        words = reply_words(prompt, int(body.get("max_tokens") or 16))
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                 "total_tokens": len(prompt.split()) + len(words)}
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            await self._whole(len(words))
            text = " ".join(words)
            # the fields vLLM sends even when empty (OpenAI's document requires them)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text,
                                               "refusal": None},
                       "logprobs": None, "finish_reason": "length"} if chat
                      else {"index": 0, "text": text, "logprobs": None,
                            "finish_reason": "length"})
            return JSONResponse({"id": "cmpl-test", "object": kind, "model": CHAT_MODEL,
                                 "created": 0, "choices": [choice], "usage": usage})
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        continuous = include_usage and bool(options.get("continuous_usage_stats"))
        return _ClosingStream(self._events(words, usage if include_usage else None, chat,
                                           continuous=continuous))

    async def _whole(self, tokens: int) -> None:
        """A whole answer takes its tokens' time too; cancelled, it counts as aborted."""
        self.unfinished += 1
        self.generating_whole.set()
        finished = False
        try:
            for _ in range(tokens if self.token_delay else 0):
                await asyncio.sleep(self.token_delay)
            finished = True
        finally:
            self.unfinished -= 1
            if not finished:
                self.aborted += 1

    async def _events(self, words: list[str], usage: dict[str, int] | None,
                      chat: bool, *, continuous: bool = False) -> AsyncIterator[str]:
        self.unfinished += 1
        finished = False
        kind = "chat.completion.chunk" if chat else "text_completion"
        try:
            for i, word in enumerate(words):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                if self.pause_after is not None and i == self.pause_after:
                    self.paused.set()
                    await self.killed.wait()  # until the request is cancelled, or kill()
                if self.killed.is_set():
                    raise RuntimeError("the engine core died")
                piece = word if i == 0 else " " + word
                choice = ({"index": 0, "delta": {"content": piece}, "logprobs": None,
                           "finish_reason": None} if chat
                          else {"index": 0, "text": piece, "logprobs": None,
                                "finish_reason": None})
                event: dict[str, Any] = {"id": "cmpl-test", "object": kind, "model": CHAT_MODEL,
                                         "created": 0, "choices": [choice]}
                if continuous and usage is not None:  # vLLM's continuous_usage_stats
                    prompt = usage["prompt_tokens"]
                    event["usage"] = {"prompt_tokens": prompt, "completion_tokens": i + 1,
                                      "total_tokens": prompt + i + 1}
                yield _sse(event)
            if usage is not None:
                yield _sse({"id": "cmpl-test", "object": kind, "model": CHAT_MODEL,
                            "created": 0, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            self.unfinished -= 1
            if not finished:
                self.aborted += 1


class _ClosingStream:
    """The SSE answer through the real engine bridge's relay (`relay_stream`): it watches
    for `http.disconnect` and closes the generator however the answer ends (vLLM aborts
    the request there)."""

    def __init__(self, events: AsyncIterator[str]) -> None:
        self._events = events

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await relay_stream(self._events, receive, send)  # type: ignore[arg-type]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


Damage = Callable[[httpx.Request, httpx.Response, bytes], bytes]


class InterceptingTransport(httpx.AsyncBaseTransport):
    """Stands between a client and an in-process gateway: keeps every request and response
    body that crosses (`wire`), and lets a test damage response bodies on the way back."""

    def __init__(self, app: Any, *, damage: Damage | None = None) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.damage = damage
        self.wire: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.wire.append(request.content)
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        if self.damage is not None:
            body = self.damage(request, response, body)
        self.wire.append(body)
        headers = [(k, v) for k, v in response.headers.items() if k != "content-length"]
        return httpx.Response(response.status_code, headers=headers,
                              stream=httpx.ByteStream(body))
