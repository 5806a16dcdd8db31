"""The Enclava platform API (seed 002) under `/api/v1/`, only on the attested TLS listener.

Plain OpenAI JSON, protected by TLS that terminates inside the enclave with a key whose
SPKI hash the attestation report binds. Bearer API keys (`clst_...`), per-key usage and
budgets, and chatbots whose conversations are sealed at rest (`platform_store.py`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from enclave import sse
from enclave.engine import EngineRequest, EngineResponse
from gateway.body import parse_json_object, read_body
from gateway.errors import ErrorCode, GatewayError, json_response, normalize_engine_error
from gateway.forwarding import RelayResponse, forward, read_whole
from gateway.metrics import set_dialect
from gateway.platform_store import ApiKey, PlatformStore

PREFIX = "/api/v1"


def _store(request: Request) -> PlatformStore:
    store = getattr(request.app.state, "platform_store", None)
    if store is None or request.url.scheme != "https":
        # The plaintext platform routes exist only on the attested TLS listener.
        raise GatewayError(ErrorCode.NOT_FOUND, "no such route")
    return store


async def _authenticate(request: Request) -> tuple[PlatformStore, ApiKey]:
    set_dialect(request, "enclava")
    store = _store(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise GatewayError(ErrorCode.UNAUTHORIZED, "missing Bearer API key")
    key = await asyncio.to_thread(store.authenticate, token.strip())
    if key is None:
        raise GatewayError(ErrorCode.UNAUTHORIZED, "unknown or revoked API key")
    return store, key


def _check_budget(key: ApiKey) -> None:
    if key.exhausted:
        raise GatewayError(ErrorCode.BUDGET_EXHAUSTED,
                           "this API key's token budget is exhausted")


async def models(request: Request) -> ASGIApp:
    await _authenticate(request)
    engine = request.app.state.engine_slot.get()
    answer = await forward(engine, request, EngineRequest("GET", "/v1/models"))
    return await _whole(request, answer, None, None)


async def openai_route(request: Request) -> ASGIApp:
    store, key = await _authenticate(request)
    _check_budget(key)
    payload = parse_json_object(await read_body(request, request.app.state.settings
                                                .max_body_bytes))
    path = "/v1" + request.url.path.removeprefix(PREFIX)
    return await _run(request, store, key, path, payload)


async def _run(request: Request, store: PlatformStore, key: ApiKey, path: str,
               payload: dict[str, Any]) -> ASGIApp:
    if payload.get("stream") is True and path != "/v1/embeddings":
        payload.setdefault("stream_options", {})["include_usage"] = True
    engine = request.app.state.engine_slot.get()
    answer = await forward(engine, request, EngineRequest(
        "POST", path, json.dumps(payload).encode(), request_id=request.state.request_id))
    if answer.is_event_stream:
        meter = _StreamMeter(store, key.id)
        return RelayResponse(answer, request.state.disconnect_watcher,
                             headers=[(b"content-type", b"text/event-stream")],
                             seal_chunk=meter.see, seal_end=meter.finish)
    return await _whole(request, answer, store, key)


async def _whole(request: Request, answer: EngineResponse, store: PlatformStore | None,
                 key: ApiKey | None) -> Response:
    content = await read_whole(request, answer)
    if answer.status >= 400:
        return Response(normalize_engine_error(answer.status, content),
                        status_code=answer.status, media_type="application/json")
    if store is not None and key is not None:
        tokens = _total_tokens(content)
        await asyncio.to_thread(store.record_usage, key.id, tokens)
    return Response(content, media_type="application/json")


def _total_tokens(content: bytes) -> int:
    try:
        usage = json.loads(content).get("usage") or {}
        return int(usage.get("total_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


class _StreamMeter:
    """Passes SSE events through untouched and records the final usage they report."""

    def __init__(self, store: PlatformStore, key_id: str) -> None:
        self._store, self._key_id = store, key_id
        self._tokens = 0

    def see(self, chunk: bytes) -> bytes:
        if b'"usage"' in chunk:
            for data in sse.data_of(chunk):
                if data.startswith(b"{"):
                    self._tokens = _total_tokens(data) or self._tokens
        return chunk

    def finish(self) -> bytes:
        self._store.record_usage(self._key_id, self._tokens)
        return b""


async def usage(request: Request) -> Response:
    _, key = await _authenticate(request)
    return json_response(200, {
        "api_key": {"id": key.id, "name": key.name, "prefix": key.lookup},
        "usage": {"total_tokens": key.used_tokens, "requests": key.requests}})


async def budget_status(request: Request) -> Response:
    _, key = await _authenticate(request)
    remaining = (None if key.budget_tokens is None
                 else max(0, key.budget_tokens - key.used_tokens))
    return json_response(200, {"budget_tokens": key.budget_tokens,
                               "used_tokens": key.used_tokens,
                               "remaining_tokens": remaining, "exhausted": key.exhausted})


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def chatbot_list(request: Request) -> Response:
    store, _ = await _authenticate(request)
    bots = await asyncio.to_thread(store.list_chatbots)
    return json_response(200, {"chatbots": [
        {"id": b.id, "name": b.name, "type": "chatbot", "model": b.model,
         "description": b.description, "created_at": _iso(b.created_at)} for b in bots]})


async def _chatbot(store: PlatformStore, request: Request) -> Any:
    bot = await asyncio.to_thread(store.get_chatbot, request.path_params["chatbot_id"])
    if bot is None:
        raise GatewayError(ErrorCode.CHATBOT_NOT_FOUND, "no such chatbot")
    return bot


async def chatbot_chat(request: Request) -> Response:
    store, key = await _authenticate(request)
    _check_budget(key)
    bot = await _chatbot(store, request)
    body = parse_json_object(await read_body(request, request.app.state.settings
                                             .max_body_bytes))
    message, conversation_id = body.get("message"), body.get("conversation_id")
    if not isinstance(message, str) or not message:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "`message` must be a non-empty string",
                           param="message")
    history: list[dict[str, str]] = []
    if conversation_id is not None:
        found = await asyncio.to_thread(store.conversation_history, str(conversation_id),
                                        chatbot_id=bot.id, api_key_id=key.id)
        if found is None:
            raise GatewayError(ErrorCode.CONVERSATION_NOT_FOUND, "no such conversation")
        history = found
    payload = {"model": bot.model, "messages": [
        {"role": "system", "content": bot.system_prompt}, *history,
        {"role": "user", "content": message}]}
    engine = request.app.state.engine_slot.get()
    answer = await forward(engine, request, EngineRequest(
        "POST", "/v1/chat/completions", json.dumps(payload).encode(),
        request_id=request.state.request_id))
    content = await read_whole(request, answer)
    if answer.status >= 400:
        return Response(normalize_engine_error(answer.status, content),
                        status_code=answer.status, media_type="application/json")
    reply = json.loads(content)
    text = reply["choices"][0]["message"].get("content") or ""
    conversation_id = await asyncio.to_thread(
        store.append_turn, conversation_id, chatbot_id=bot.id, api_key_id=key.id,
        user=message, assistant=text)
    await asyncio.to_thread(store.record_usage, key.id, _total_tokens(content))
    return json_response(200, {"conversation_id": conversation_id, "response": text,
                               "timestamp": _iso(dt.datetime.now(dt.UTC).timestamp())})


async def chatbot_completions(request: Request) -> ASGIApp:
    store, key = await _authenticate(request)
    _check_budget(key)
    bot = await _chatbot(store, request)
    payload = parse_json_object(await read_body(request, request.app.state.settings
                                                .max_body_bytes))
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise GatewayError(ErrorCode.INVALID_REQUEST, "`messages` must be a list",
                           param="messages")
    payload["model"] = bot.model  # the chatbot's model, whatever the client named
    payload["messages"] = [{"role": "system", "content": bot.system_prompt}, *messages]
    return await _run(request, store, key, "/v1/chat/completions", payload)


ROUTES = [
    Route(f"{PREFIX}/models", models, methods=["GET"]),
    Route(f"{PREFIX}/chat/completions", openai_route, methods=["POST"]),
    Route(f"{PREFIX}/completions", openai_route, methods=["POST"]),
    Route(f"{PREFIX}/embeddings", openai_route, methods=["POST"]),
    Route(f"{PREFIX}/usage", usage, methods=["GET"]),
    Route(f"{PREFIX}/budget/status", budget_status, methods=["GET"]),
    Route(f"{PREFIX}/chatbot/list", chatbot_list, methods=["GET"]),
    Route(f"{PREFIX}/chatbot/external/{{chatbot_id}}/chat", chatbot_chat, methods=["POST"]),
    Route(f"{PREFIX}/chatbot/external/{{chatbot_id}}/chat/completions", chatbot_completions,
          methods=["POST"]),
]
