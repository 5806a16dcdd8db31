"""The Enclava platform API: TLS-only routes, API keys, budgets, chatbots with sealed
conversations, and a store that survives a restart."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import httpx
import pytest

from enclave.sealed_state import DataKey
from gateway.app import create_app
from gateway.config import ServeConfig
from gateway.platform_store import PlatformStore, StateInvalid
from testkit.doubles import CHAT_MODEL, EMBEDDING_MODEL, DeterministicTestEngine
from tests.asgi import call_until_hang_up, http_scope
from tests.unit.conftest import start

CANARY = "CANARY-platform-3f9a"


@pytest.fixture
def store_factory(tmp_path: Path):
    def make() -> PlatformStore:
        return PlatformStore(f"sqlite:///{tmp_path / 'platform.db'}",
                             DataKey.from_key_file(tmp_path / "data-key"))
    return make


def new_key(store: PlatformStore, name: str, *, account: str = "acme",
            budget_tokens: int | None = None):
    """(secret, record) of a new key of the account named `account` (made if new)."""
    found = [a.id for a in store.list_accounts() if a.name == account]
    account_id = found[0] if found else store.create_account(account).id
    return store.create_api_key(account_id, name, budget_tokens=budget_tokens)


@contextlib.asynccontextmanager
async def platform(store: PlatformStore, engine: DeterministicTestEngine, scheme="https",
                   **settings):
    """A client of the TLS listener's app (https) or of the public one (http)."""
    app = create_app(ServeConfig.of(**settings), engine.running, platform_store=store)
    async with app.router.lifespan_context(app):
        await start(app)
        served = app.tls_app if scheme == "https" else app
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=served),
                                     base_url=f"{scheme}://gw") as client:
            yield client


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_routes_exist_only_on_the_tls_listener(store_factory) -> None:
    store = store_factory()
    key, _ = new_key(store, "k")
    async with platform(store, DeterministicTestEngine(), scheme="http") as client:
        r = await client.get("/api/v1/models", headers=_auth(key))
        # a proxy header does not make the public listener the TLS one
        forged = await client.get("/api/v1/models", headers={
            **_auth(key), "x-forwarded-proto": "https"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert forged.status_code == 404


async def test_openai_routes_with_a_valid_key_record_usage(store_factory) -> None:
    store = store_factory()
    key, record = new_key(store, "team", budget_tokens=1000)
    assert key.startswith("clst_") and len(key) > 40
    async with platform(store, DeterministicTestEngine()) as client:
        chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "a b"}],
                "max_tokens": 3, "temperature": 0.7, "stop": ["zz"], "presence_penalty": 0.1}
        r = await client.post("/api/v1/chat/completions", json=chat, headers=_auth(key))
        assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == 5
        s = await client.post("/api/v1/chat/completions", json={**chat, "stream": True},
                              headers=_auth(key))
        assert s.text.endswith("data: [DONE]\n\n")
        e = await client.post("/api/v1/embeddings", json={"model": EMBEDDING_MODEL,
                                                           "input": ["x"]}, headers=_auth(key))
        assert len(e.json()["data"][0]["embedding"]) == 384
        models = await client.get("/api/v1/models", headers=_auth(key))
        assert models.json()["data"][0]["id"] == CHAT_MODEL
        usage = (await client.get("/api/v1/usage", headers=_auth(key))).json()
        budget = (await client.get("/api/v1/budget/status", headers=_auth(key))).json()
    assert usage["usage"]["requests"] == 3 and usage["usage"]["total_tokens"] == 11
    assert budget == {"budget_tokens": 1000, "used_tokens": 11, "remaining_tokens": 989,
                      "exhausted": False}


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer clst_nope", "Basic abc"])
async def test_missing_unknown_or_malformed_keys_get_401(store_factory, header) -> None:
    headers = {"authorization": header} if header else {}
    async with platform(store_factory(), DeterministicTestEngine()) as client:
        r = await client.get("/api/v1/models", headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key")


async def test_revoked_key_and_a_budget_that_does_not_cover_the_request(store_factory) -> None:
    store = store_factory()
    revoked, record = new_key(store, "old")
    store.revoke_api_key(record.id)
    small, _ = new_key(store, "small", budget_tokens=40)
    chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "a b"}],
            "max_tokens": 3}
    engine = DeterministicTestEngine()
    async with platform(store, engine) as client:
        r = await client.post("/api/v1/chat/completions", json=chat, headers=_auth(revoked))
        assert r.status_code == 401
        r = await client.post("/api/v1/chat/completions", json=chat, headers=_auth(small))
    # its maximum cost (the prompt's bytes, the template, max_tokens) is over 40 tokens
    assert (r.status_code, r.json()["error"]["code"]) == (402, "budget_exhausted")
    assert engine.seen_bodies == []


async def test_chatbot_remembers_the_conversation_and_seals_it(store_factory, tmp_path) -> None:
    store = store_factory()
    key, record = new_key(store, "bots")
    bot = store.create_chatbot(record.account_id, "Support", CHAT_MODEL,
                               f"system says {CANARY}", "helps")
    engine = DeterministicTestEngine()
    async with platform(store, engine) as client:
        listed = (await client.get("/api/v1/chatbot/list", headers=_auth(key))).json()
        assert listed["chatbots"][0]["id"] == bot.id
        assert listed["chatbots"][0]["model"] == CHAT_MODEL
        url = f"/api/v1/chatbot/external/{bot.id}/chat"
        first = (await client.post(url, json={"message": f"first {CANARY}"},
                                   headers=_auth(key))).json()
        second = (await client.post(url, json={"message": "second",
                                               "conversation_id": first["conversation_id"]},
                                    headers=_auth(key))).json()
        assert second["conversation_id"] == first["conversation_id"]
        assert first["timestamp"].endswith("Z")
        sent = engine.seen_bodies[-1]["messages"]
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
        assert CANARY in sent[0]["content"] and CANARY in sent[1]["content"]
        compat = await client.post(f"/api/v1/chatbot/external/{bot.id}/chat/completions",
                                   json={"model": "any", "messages": [
                                       {"role": "user", "content": "hi"}]},
                                   headers=_auth(key))
        assert compat.status_code == 200 and engine.seen_bodies[-1]["model"] == CHAT_MODEL
    raw = (tmp_path / "platform.db").read_bytes()
    assert CANARY.encode() not in raw and b"first" not in raw


async def test_unknown_chatbot_and_conversation_and_bad_bodies(store_factory) -> None:
    store = store_factory()
    key, record = new_key(store, "k")
    other_key, _ = new_key(store, "other", account="globex")
    bot = store.create_chatbot(record.account_id, "b", CHAT_MODEL, "p")
    async with platform(store, DeterministicTestEngine()) as client:
        r = await client.post("/api/v1/chatbot/external/nope/chat", json={"message": "x"},
                              headers=_auth(key))
        assert (r.status_code, r.json()["error"]["code"]) == (404, "chatbot_not_found")
        url = f"/api/v1/chatbot/external/{bot.id}/chat"
        r = await client.post(url, json={"message": "x", "conversation_id": "zzz"},
                              headers=_auth(key))
        assert (r.status_code, r.json()["error"]["code"]) == (404, "conversation_not_found")
        mine = (await client.post(url, json={"message": "x"}, headers=_auth(key))).json()
        r = await client.post(url, json={"message": "y", "conversation_id":
                                         mine["conversation_id"]}, headers=_auth(other_key))
        assert r.status_code == 404  # another account's chatbot is not yours
        for bad in (b"{", b"[]", json.dumps({"message": ""}).encode()):
            r = await client.post(url, content=bad, headers=_auth(key))
            assert r.status_code == 400


async def test_restart_with_the_same_data_key_loses_nothing(store_factory) -> None:
    store = store_factory()
    key, record = new_key(store, "persist", budget_tokens=5000)
    bot = store.create_chatbot(record.account_id, "b", CHAT_MODEL, f"prompt {CANARY}")
    async with platform(store, DeterministicTestEngine()) as client:
        first = (await client.post(f"/api/v1/chatbot/external/{bot.id}/chat",
                                   json={"message": "remember me"}, headers=_auth(key))).json()
    store.close()
    again = store_factory()  # a new process: same database, same key file
    assert again.authenticate(key) is not None
    assert again.get_chatbot(bot.id, account_id=record.account_id).system_prompt == (
        f"prompt {CANARY}")
    history = again.conversation_history(first["conversation_id"], chatbot_id=bot.id,
                                         account_id=record.account_id, api_key_id=record.id)
    assert history and history[0] == {"role": "user", "content": "remember me"}
    assert again.get_api_key(record.id).used_tokens > 0


def test_another_data_key_cannot_open_sealed_rows(store_factory, tmp_path) -> None:
    store = store_factory()
    account = store.create_account("acme")
    bot = store.create_chatbot(account.id, "b", CHAT_MODEL, "secret prompt")
    store.close()
    stranger = PlatformStore(f"sqlite:///{tmp_path / 'platform.db'}", DataKey(os.urandom(32)))
    with pytest.raises(StateInvalid):
        stranger.get_chatbot(bot.id, account_id=account.id)
    assert "[redacted]" in repr(DataKey(os.urandom(32)))


async def test_a_client_that_hangs_up_mid_stream_is_still_metered(store_factory) -> None:
    """Metering happens on every path: a stream cut by its client records what the engine
    generated until then (attack: hang up before the usage event to use tokens for free)."""
    store = store_factory()
    key, record = new_key(store, "leaver", budget_tokens=10_000)
    engine = DeterministicTestEngine()
    app = create_app(ServeConfig.of(), engine.running, platform_store=store)
    body = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "a b"}],
                       "max_tokens": 500, "stream": True}).encode()
    scope = http_scope("POST", "/api/v1/chat/completions", body=body, scheme="https",
                       headers=[("content-type", "application/json"),
                                ("authorization", f"Bearer {key}")])
    engine.pause_after = 5  # the engine waits (for the test) after five tokens
    async with app.router.lifespan_context(app):
        await start(app)
        await call_until_hang_up(app.tls_app, scope, body, hang_up_after=lambda m: (
            m["type"] == "http.response.body" and engine.paused.is_set()))
    assert engine.aborted == 1
    used = store.get_api_key(record.id)
    assert used.requests == 1 and used.reserved_tokens == 0  # settled
    assert used.used_tokens == 2 + 5  # the prompt and the five tokens generated


async def test_a_chatbot_flood_beyond_the_per_client_limit_is_refused_429(store_factory) -> None:
    """The chatbot route is admitted like every other request: while one of a key's chats
    is being answered, `--max-per-client 1` refuses its next chat (and its next OpenAI
    request) with 429."""
    import asyncio

    store = store_factory()
    key, record = new_key(store, "k")
    bot = store.create_chatbot(record.account_id, "b", CHAT_MODEL, "be brief")
    engine = DeterministicTestEngine(token_delay=0.1)
    url = f"/api/v1/chatbot/external/{bot.id}/chat"
    async with platform(store, engine, max_per_client=1, max_tokens=20) as client:
        first = asyncio.create_task(client.post(url, json={"message": "one two"},
                                                headers=_auth(key)))
        await engine.generating_whole.wait()
        flood = [await client.post(url, json={"message": "more"}, headers=_auth(key))
                 for _ in range(3)]
        openai = await client.post("/api/v1/chat/completions", headers=_auth(key), json={
            "model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}]})
        answered = await first
    assert answered.status_code == 200, answered.text
    for refused in [*flood, openai]:
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limited")
        assert refused.headers["retry-after"] == "2"
