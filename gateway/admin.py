"""The admin API under `/admin/v1/`, on the attested TLS listener only: what an operator
does without a shell in the confidential VM.

Every request is signed by the admin key whose public half the deployment pins
(`cloister serve --admin-public-key`, recorded in the workload manifest as
`admin_key_sha256`, so a client of the report sees who may administer this gateway);
see `enclave.admin_signature`. The private key never reaches the gateway; a signature
seen once within its window is refused again (a replay). `cloister admin ...` is the
client: it verifies the gateway's attestation and pins its TLS certificate first.

    POST /admin/v1/accounts             {name}                       an account
    GET  /admin/v1/accounts
    POST /admin/v1/keys                 {account_id, name, budget_tokens?}
                                        the new key once, in the answer only
    GET  /admin/v1/keys[?account_id=]
    POST /admin/v1/keys/{id}/revoke
    POST /admin/v1/keys/{id}/budget     {budget_tokens}
    POST /admin/v1/chatbots             {account_id, name, model, system_prompt,
                                         description?}
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from enclave import admin_signature
from enclave.replay import MemoryReplayCache, ReplayCacheFull
from enclave.wire_errors import ErrorCode
from gateway.body import parse_json_object, read_body
from gateway.context import RequestContext
from gateway.errors import GatewayError, json_response
from gateway.platform_store import ApiKey, PlatformStore, StoreError

PREFIX = "/admin/v1"
MAX_ADMIN_BODY = 256 * 1024
Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "account_id": key.account_id, "name": key.name,
            "prefix": key.lookup, "revoked": key.revoked, "budget_tokens": key.budget_tokens,
            "used_tokens": key.used_tokens, "reserved_tokens": key.reserved_tokens,
            "requests": key.requests}


def _field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"`{name}` must be a {kind.__name__}",
                           param=name)
    return value


class AdminApi:
    def __init__(self, store: PlatformStore, public_key: ed25519.Ed25519PublicKey, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._store, self._public, self._clock = store, public_key, clock
        # one signer: full means refused, never a signature forgotten while still valid
        self._seen = MemoryReplayCache(max_entries=100_000, share=None)

    async def _authorized(self, request: Request) -> dict[str, Any]:
        RequestContext.of(request.scope).dialect = "admin"
        body = await read_body(request, MAX_ADMIN_BODY, timeout=30)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        now = self._clock()
        try:
            signature = admin_signature.verify(self._public, request.method, target, body,
                                               dict(request.headers), now=now)
            fresh = self._seen.add(hashlib.sha256(signature).digest(),
                                   now + 2 * admin_signature.WINDOW_SECONDS, now)
        except (admin_signature.BadAdminSignature, ReplayCacheFull) as exc:
            raise GatewayError(ErrorCode.ADMIN_UNAUTHORIZED, str(exc)) from None
        if not fresh:
            raise GatewayError(ErrorCode.ADMIN_UNAUTHORIZED, "this admin request was "
                               "already carried out (a replay)")
        return parse_json_object(body) if body else {}

    def _signed(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            body = await self._authorized(request)
            try:
                return await handler(request, body)
            except StoreError as exc:
                raise GatewayError(exc.code, exc.message) from None
        return endpoint

    async def create_account(self, request: Request, body: dict[str, Any]) -> Response:
        account = await asyncio.to_thread(self._store.create_account,
                                          _field(body, "name", str))
        return json_response(200, {"id": account.id, "name": account.name})

    async def list_accounts(self, request: Request, body: dict[str, Any]) -> Response:
        found = await asyncio.to_thread(self._store.list_accounts)
        return json_response(200, {"accounts": [{"id": a.id, "name": a.name}
                                                for a in found]})

    async def create_key(self, request: Request, body: dict[str, Any]) -> Response:
        secret, key = await asyncio.to_thread(
            self._store.create_api_key, _field(body, "account_id", str),
            _field(body, "name", str),
            budget_tokens=_field(body, "budget_tokens", int, required=False))
        return json_response(200, {**_key_json(key), "key": secret})

    async def list_keys(self, request: Request, body: dict[str, Any]) -> Response:
        keys = await asyncio.to_thread(self._store.list_api_keys,
                                       request.query_params.get("account_id"))
        return json_response(200, {"keys": [_key_json(k) for k in keys]})

    async def revoke_key(self, request: Request, body: dict[str, Any]) -> Response:
        revoked = await asyncio.to_thread(self._store.revoke_api_key,
                                          request.path_params["key_id"])
        if not revoked:
            raise GatewayError(ErrorCode.NOT_FOUND, "no active key with that id")
        return json_response(200, {"revoked": True})

    async def set_budget(self, request: Request, body: dict[str, Any]) -> Response:
        key = await asyncio.to_thread(self._store.set_budget, request.path_params["key_id"],
                                      _field(body, "budget_tokens", int, required=False))
        if key is None:
            raise GatewayError(ErrorCode.NOT_FOUND, "no key with that id")
        return json_response(200, _key_json(key))

    async def create_chatbot(self, request: Request, body: dict[str, Any]) -> Response:
        bot = await asyncio.to_thread(
            self._store.create_chatbot, _field(body, "account_id", str),
            _field(body, "name", str), _field(body, "model", str),
            _field(body, "system_prompt", str),
            _field(body, "description", str, required=False) or "")
        return json_response(200, {"id": bot.id, "account_id": bot.account_id,
                                   "name": bot.name, "model": bot.model})

    def routes(self) -> list[BaseRoute]:
        signed = self._signed
        return [
            Route(f"{PREFIX}/accounts", signed(self.create_account), methods=["POST"]),
            Route(f"{PREFIX}/accounts", signed(self.list_accounts), methods=["GET"]),
            Route(f"{PREFIX}/keys", signed(self.create_key), methods=["POST"]),
            Route(f"{PREFIX}/keys", signed(self.list_keys), methods=["GET"]),
            Route(f"{PREFIX}/keys/{{key_id}}/revoke", signed(self.revoke_key),
                  methods=["POST"]),
            Route(f"{PREFIX}/keys/{{key_id}}/budget", signed(self.set_budget),
                  methods=["POST"]),
            Route(f"{PREFIX}/chatbots", signed(self.create_chatbot), methods=["POST"]),
        ]
