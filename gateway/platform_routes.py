"""The Enclava platform API (seed 002) under `/api/v1/`, only on the attested TLS listener.

Plain OpenAI JSON, protected by TLS that terminates inside the enclave with a key whose
SPKI hash the attestation report binds. The OpenAI routes go through the one engine
endpoint as the `enclava` identity dialect, behind a gate (Bearer API keys, budgets)
and a meter that records usage on every path, a client that hangs up mid-stream
included (streams carry vLLM's running usage). Chatbot conversations are sealed at rest
(`platform_store.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from enclave import sse
from enclave.dialect import InnerRequest, OuterResponse
from enclave.engine import EngineRequest
from enclave.errors import RequestRefused
from enclave.plaintext import platform_dialect
from enclave.wire_errors import ErrorCode, normalize_engine_error
from gateway import sampling
from gateway.body import parse_json_object, payload_object, read_body
from gateway.context import RequestContext
from gateway.endpoint import (
    EngineEndpoint,
    Mount,
    NoObserver,
    Observer,
    Services,
    admit,
    tenant_salt,
    to_response,
)
from gateway.engine_call import EngineCall
from gateway.errors import GatewayError, json_response
from gateway.platform_store import (
    ApiKey,
    Chatbot,
    PlatformStore,
    Reservation,
    StoreError,
    StoreUnavailable,
)

PREFIX = "/api/v1"
NAME = "enclava"
T = TypeVar("T")


# The output a request may ask for when it names none and a budget is at stake (and
# `--max-tokens` is not set): what the reservation covers.
DEFAULT_MAX_TOKENS = 2048
# Tokens a chat template adds around the prompt, over the body's bytes (an upper bound
# of its tokens for byte-level tokenizers), in the reservation.
TEMPLATE_TOKENS = 64


# Seconds between attempts to settle a reservation while the database is unavailable.
SETTLE_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 16, 32)
log = structlog.get_logger("cloister.platform")

# Where `Platform.bearer_required` leaves the authenticated key for the gate.
API_KEY_STATE = "cloister_api_key"


class Meter:
    """Settles one request's reservation to its real usage, whatever way it ended: the
    usage the engine reported (streams carry it in every event, so a stream cut short
    is charged to the token it reached; a request that never got an answer, nothing)."""

    wants_usage = True

    def __init__(self, store: PlatformStore, reservation: Reservation) -> None:
        self._store, self._reservation = store, reservation

    async def finish(self, usage: dict[str, Any] | None, completed: bool) -> None:
        """Settle; while the database is unavailable, retry (backing off) for a while:
        until settled, the reservation holds the request's maximum against the budget,
        so nothing is given away."""
        for delay in SETTLE_RETRY_DELAYS:
            try:
                await asyncio.to_thread(self._store.settle, self._reservation, _tokens(usage))
                return
            except StoreUnavailable:
                await asyncio.sleep(delay)
        log.error("settle_abandoned", code=ErrorCode.STORE_UNAVAILABLE.value)


def _tokens(usage: dict[str, Any] | None) -> int:
    try:
        return int((usage or {}).get("total_tokens") or 0)
    except (TypeError, ValueError):
        return 0


async def _stored(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A store call off the event loop; its refusals as the gateway's errors."""
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except StoreError as exc:
        raise GatewayError(exc.code, exc.message) from None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Platform:
    """The platform API's routes over one store."""

    def __init__(self, store: PlatformStore, services: Services) -> None:
        self._store = store
        self._services = services

    async def authenticate(self, request: Request) -> ApiKey:
        RequestContext.of(request.scope).dialect = NAME
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(ErrorCode.UNAUTHORIZED, "missing Bearer API key")
        key = await _stored(self._store.authenticate, token.strip())
        if key is None:
            raise GatewayError(ErrorCode.UNAUTHORIZED, "unknown or revoked API key")
        return key

    def bearer_required(self, app: ASGIApp, dialect: str,
                        refuse: Callable[[RequestRefused], OuterResponse]) -> ASGIApp:
        """`app` behind a platform API key, checked before the body is read or opened: a
        wrong token costs no crypto and gets the dialect's own refusal (`refuse`). The key
        is left in the scope for the gate (`metered_gate`)."""
        return _BearerRequired(self, app, dialect, refuse)

    def rejected(self, err: GatewayError) -> None:
        self._services.metrics.rejected.labels(err.code.value).inc()

    async def metered_gate(self, request: Request, inner: InnerRequest
                           ) -> tuple[InnerRequest, Observer]:
        """For a dialect behind `bearer_required`: the request runs as the key's tenant,
        and its cost is reserved against the key's budget and settled when it ends."""
        key = request.scope["state"][API_KEY_STATE]
        return await self._metered(key, inner)

    async def _metered(self, key: ApiKey, inner: InnerRequest
                       ) -> tuple[InnerRequest, Observer]:
        if inner.method == "GET":
            return _as_tenant(inner, key), NoObserver()
        payload = dict(payload_object(inner))
        meter = await self._reserve(key, payload, len(inner.body),
                                    generates=inner.path != "/v1/embeddings")
        return _as_tenant(_with_running_usage(inner.with_payload(payload)), key), meter

    async def _reserve(self, key: ApiKey, payload: dict[str, Any], body_size: int, *,
                       generates: bool = True) -> Meter:
        """Reserve the request's maximum cost: its prompt (bounded by the body's size)
        and, when it generates, its output (`max_tokens` times the choices, a default
        put in if absent)."""
        output = 0
        if generates:
            limits = sampling.normalize(payload, cap=self._services.max_tokens
                                        or DEFAULT_MAX_TOKENS)
            output = limits.max_output or 0
        reservation = await _stored(self._store.reserve, key.id,
                                    body_size + TEMPLATE_TOKENS + output)
        return Meter(self._store, reservation)

    # --- through the engine endpoint -------------------------------------------------------

    async def openai_gate(self, request: Request, inner: InnerRequest
                          ) -> tuple[InnerRequest, Observer]:
        key = await self.authenticate(request)
        if inner.method == "GET":
            return inner, NoObserver()
        return await self._metered(key, inner)

    async def chatbot_gate(self, request: Request, inner: InnerRequest
                           ) -> tuple[InnerRequest, Observer]:
        key = await self.authenticate(request)
        bot = await self._chatbot(request, key)
        payload = dict(payload_object(inner))
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise GatewayError(ErrorCode.INVALID_REQUEST, "`messages` must be a list",
                               param="messages")
        payload["model"] = bot.model  # the chatbot's model, whatever the client named
        payload["messages"] = [{"role": "system", "content": bot.system_prompt}, *messages]
        meter = await self._reserve(key, payload, len(json.dumps(payload)))
        inner = InnerRequest("POST", "/v1/chat/completions").with_payload(payload)
        return _as_tenant(_with_running_usage(inner), key), meter

    # --- answered here -----------------------------------------------------------------------

    async def usage(self, request: Request) -> Response:
        key = await self.authenticate(request)
        return json_response(200, {
            "api_key": {"id": key.id, "name": key.name, "prefix": key.lookup},
            "usage": {"total_tokens": key.used_tokens, "requests": key.requests}})

    async def budget_status(self, request: Request) -> Response:
        key = await self.authenticate(request)
        remaining = (None if key.budget_tokens is None
                     else max(0, key.budget_tokens - key.used_tokens))
        return json_response(200, {"budget_tokens": key.budget_tokens,
                                   "used_tokens": key.used_tokens,
                                   "remaining_tokens": remaining, "exhausted": key.exhausted})

    async def chatbot_list(self, request: Request) -> Response:
        key = await self.authenticate(request)
        bots = await _stored(self._store.list_chatbots, key.account_id)
        return json_response(200, {"chatbots": [
            {"id": b.id, "name": b.name, "type": "chatbot", "model": b.model,
             "description": b.description, "created_at": _iso(b.created_at)} for b in bots]})

    async def _chatbot(self, request: Request, key: ApiKey) -> Chatbot:
        """The chatbot the path names, if it is the key's account's (else not found)."""
        bot = await _stored(self._store.get_chatbot, request.path_params["chatbot_id"],
                            account_id=key.account_id)
        if bot is None:
            raise GatewayError(ErrorCode.CHATBOT_NOT_FOUND, "no such chatbot")
        return bot

    async def chatbot_chat(self, request: Request) -> Response:
        """`{message, conversation_id?}` -> `{conversation_id, response, timestamp}`."""
        key = await self.authenticate(request)
        bot = await self._chatbot(request, key)
        body = parse_json_object(await read_body(request, self._services.max_body_bytes,
                                                 timeout=self._services.body_timeout))
        message, conversation_id = body.get("message"), body.get("conversation_id")
        if not isinstance(message, str) or not message:
            raise GatewayError(ErrorCode.INVALID_REQUEST, "`message` must be a non-empty string",
                               param="message")
        history: list[dict[str, str]] = []
        if conversation_id is not None:
            found = await _stored(self._store.conversation_history, str(conversation_id),
                                  chatbot_id=bot.id, account_id=key.account_id,
                                  api_key_id=key.id)
            if found is None:
                raise GatewayError(ErrorCode.CONVERSATION_NOT_FOUND, "no such conversation")
            history = found
        payload: dict[str, Any] = {"model": bot.model, "messages": [
            {"role": "system", "content": bot.system_prompt}, *history,
            {"role": "user", "content": message}]}
        in_flight = self._services.metrics.in_flight.labels(NAME)
        with admit(self._services, request.scope):  # as every engine-bound request
            meter = await self._reserve(key, payload, len(json.dumps(payload)))
            in_flight.inc()
            try:
                status, content = await self._engine_answer(request, key, payload, meter)
            finally:
                in_flight.dec()
        if status >= 400:
            return Response(normalize_engine_error(status, content), status_code=status,
                            media_type="application/json")
        text = json.loads(content)["choices"][0]["message"].get("content") or ""
        conversation_id = await _stored(
            self._store.append_turn, conversation_id, chatbot_id=bot.id,
            account_id=key.account_id, api_key_id=key.id, user=message, assistant=text)
        return json_response(200, {"conversation_id": conversation_id, "response": text,
                                   "timestamp": _iso(dt.datetime.now(dt.UTC).timestamp())})

    async def _engine_answer(self, request: Request, key: ApiKey, payload: dict[str, Any],
                             meter: Meter) -> tuple[int, bytes]:
        """One whole engine answer, settled whatever happens."""
        usage, call = None, None
        try:
            call = EngineCall(self._services.slot.get(), request.receive)
            payload["cache_salt"] = tenant_salt(self._services.cache_salt_key, _tenant(key))
            answer = await call.start(EngineRequest(
                "POST", "/v1/chat/completions", json.dumps(payload).encode(),
                request_id=RequestContext.of(request.scope).request_id))
            content = await answer.read()
            if answer.status < 400:
                usage = sse.usage_of(content)
            return answer.status, content
        finally:
            if call is not None:
                await call.close()
            await asyncio.shield(meter.finish(usage, usage is not None))

    def routes(self) -> list[BaseRoute]:
        dialect = platform_dialect()
        openai = EngineEndpoint([Mount(dialect, self.openai_gate)], self._services)
        chatbot = EngineEndpoint([Mount(dialect, self.chatbot_gate)], self._services)
        return [
            Route(f"{PREFIX}/models", openai, methods=["GET"]),
            Route(f"{PREFIX}/chat/completions", openai, methods=["POST"]),
            Route(f"{PREFIX}/completions", openai, methods=["POST"]),
            Route(f"{PREFIX}/embeddings", openai, methods=["POST"]),
            Route(f"{PREFIX}/usage", self.usage, methods=["GET"]),
            Route(f"{PREFIX}/budget/status", self.budget_status, methods=["GET"]),
            Route(f"{PREFIX}/chatbot/list", self.chatbot_list, methods=["GET"]),
            Route(f"{PREFIX}/chatbot/external/{{chatbot_id}}/chat", self.chatbot_chat,
                  methods=["POST"]),
            Route(f"{PREFIX}/chatbot/external/{{chatbot_id}}/chat/completions", chatbot,
                  methods=["POST"]),
        ]


class _BearerRequired:
    """An ASGI app (not a function, which Starlette would treat as a request handler)."""

    def __init__(self, platform: Platform, app: ASGIApp, dialect: str,
                 refuse: Callable[[RequestRefused], OuterResponse]) -> None:
        self._platform, self._app, self._dialect, self._refuse = platform, app, dialect, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            key = await self._platform.authenticate(Request(scope, receive))
        except GatewayError as err:
            RequestContext.of(scope).dialect = self._dialect
            self._platform.rejected(err)
            await to_response(self._refuse(err))(scope, receive, send)
            return
        scope.setdefault("state", {})[API_KEY_STATE] = key
        await self._app(scope, receive, send)


def _tenant(key: ApiKey) -> bytes:
    """Requests under one API key share a prefix cache; no one else's do."""
    return f"api-key:{key.id}".encode()


def _as_tenant(inner: InnerRequest, key: ApiKey) -> InnerRequest:
    return dataclasses.replace(inner, tenant=_tenant(key))


def _with_running_usage(inner: InnerRequest) -> InnerRequest:
    """Streams report usage in every event (vLLM's `continuous_usage_stats`), so that a
    stream cut short is metered to the token it reached."""
    try:
        payload = inner.payload
    except (ValueError, UnicodeDecodeError):
        return inner
    if not isinstance(payload, dict) or payload.get("stream") is not True \
            or inner.path == "/v1/embeddings":
        return inner
    options = payload.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    options.update(include_usage=True, continuous_usage_stats=True)
    return inner.with_payload({**payload, "stream_options": options})
