"""The gateway's HTTP surface against the deterministic test engine."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.doubles import CHAT_MODEL, EMBEDDING_DIM, EMBEDDING_MODEL, DeterministicTestEngine
from tests.asgi import scrape
from tests.unit.conftest import start

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4}


async def test_health_answers_ok(default_client: httpx.AsyncClient) -> None:
    r = await default_client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_ready_lists_models_once_engine_answers(default_client: httpx.AsyncClient) -> None:
    r = await default_client.get("/ready")
    assert r.status_code == 200
    assert r.json()["models"] == [CHAT_MODEL, EMBEDDING_MODEL]


async def test_ready_is_503_while_engine_unhealthy(default_client, engine) -> None:
    engine.healthy = False
    r = await default_client.get("/ready")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "engine_not_ready"


async def test_ready_is_503_with_retry_after_before_engine_starts() -> None:
    gate = asyncio.Event()
    engine = DeterministicTestEngine()

    @contextlib.asynccontextmanager
    async def slow_factory():
        await gate.wait()
        yield engine

    app = create_app(ServeConfig.of(), slow_factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (await client.get("/health")).status_code == 200
            r = await client.get("/ready")
            assert r.status_code == 503
            assert r.headers["retry-after"] == "5"
            assert r.json()["error"]["code"] == "engine_not_ready"
            gate.set()
            await start(app)
            assert (await client.get("/ready")).status_code == 200


async def test_engine_failure_is_reported_and_triggers_shutdown_hook() -> None:
    calls: list[str] = []

    @contextlib.asynccontextmanager
    async def broken_factory():
        raise RuntimeError("no such model /secret/path")
        yield  # pragma: no cover

    app = create_app(ServeConfig.of(), broken_factory, on_engine_failure=lambda: calls.append("x"))
    async with app.router.lifespan_context(app):
        await start(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            health = await client.get("/health")
            models = await client.get("/v1/models")
    assert calls == ["x"]
    assert health.status_code == 503
    assert health.json()["error"]["code"] == "engine_failed"
    assert models.status_code == 503
    assert "/secret/path" not in health.text + models.text


async def test_models_are_served_in_plaintext_by_default(default_client) -> None:
    r = await default_client.get("/v1/models")
    assert r.status_code == 200
    cards = r.json()["data"]
    assert [c["id"] for c in cards] == [CHAT_MODEL, EMBEDDING_MODEL]
    assert all(c["max_model_len"] == 2048 for c in cards)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_plaintext_prompts_are_refused_by_default(default_client, engine, path) -> None:
    r = await default_client.post(path, json=CHAT)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "plaintext_refused"
    assert engine.seen_bodies == []


async def test_plaintext_chat_with_flag(plaintext_client: httpx.AsyncClient) -> None:
    r = await plaintext_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "echo: hello there tick"
    assert body["usage"]["completion_tokens"] == 4
    assert len(r.headers["x-request-id"]) == 32


async def test_plaintext_stream_relays_every_event(plaintext_client) -> None:
    req = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    r = await plaintext_client.post("/v1/chat/completions", json=req)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    text = "".join(p["choices"][0]["delta"]["content"] for p in payloads if p["choices"])
    assert text == "echo: hello there tick"
    assert payloads[-1]["usage"]["total_tokens"] == 6


async def test_plaintext_completion_and_embedding(plaintext_client) -> None:
    r = await plaintext_client.post("/v1/completions",
                                    json={"model": CHAT_MODEL, "prompt": "a b", "max_tokens": 3})
    assert r.json()["choices"][0]["text"] == "echo: a b"
    r = await plaintext_client.post("/v1/embeddings",
                                    json={"model": EMBEDDING_MODEL, "input": "hello"})
    vector = r.json()["data"][0]["embedding"]
    assert len(vector) == EMBEDDING_DIM
    assert sum(x * x for x in vector) == pytest.approx(1.0)


async def test_malformed_json_is_invalid_json(plaintext_client, engine) -> None:
    r = await plaintext_client.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"] == {"message": "request body is not valid JSON",
                                 "type": "invalid_request_error", "code": "invalid_json",
                                 "param": None}
    r = await plaintext_client.post("/v1/chat/completions", content=b"[1, 2]")
    assert r.json()["error"]["code"] == "invalid_json"
    assert engine.seen_bodies == []


async def test_missing_field_is_invalid_request(plaintext_client) -> None:
    r = await plaintext_client.post("/v1/chat/completions", json={"model": CHAT_MODEL})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["param"] == "body.messages"


async def test_unknown_model_is_model_not_found(plaintext_client) -> None:
    r = await plaintext_client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"


async def test_oversized_body_is_refused_before_the_engine(plaintext_client, engine) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}]}
    r = await plaintext_client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    assert engine.seen_bodies == []


async def test_oversized_streamed_body_without_length_is_refused(plaintext_client) -> None:
    async def chunks():
        for _ in range(20):
            yield b"x" * 8192

    r = await plaintext_client.post("/v1/chat/completions", content=chunks())
    assert r.status_code == 413


async def test_unknown_route_and_wrong_method_get_json_errors(default_client) -> None:
    r = await default_client.get("/v1/nothing")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = await default_client.get("/v1/chat/completions")
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_server_keeps_serving_after_bad_input(plaintext_client) -> None:
    for bad in (b"", b"{", b"null", b"\xff\xfe"):
        assert (await plaintext_client.post("/v1/chat/completions", content=bad)).status_code == 400
    assert (await plaintext_client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_metrics_expose_engine_state(make_app) -> None:
    app = make_app()
    async with app.router.lifespan_context(app):
        await start(app)
        text = await scrape(app)
    assert "cloister_engine_ready 1.0" in text
    assert "cloister_engine_requests_unfinished 0.0" in text


async def test_metrics_are_not_on_the_public_listener_without_a_token(make_app,
                                                                     tmp_path) -> None:
    async with _public(make_app()) as public:
        assert (await public.get("/metrics")).status_code == 404
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    async with _public(make_app(metrics_token_file=token)) as public:
        assert (await public.get("/metrics")).status_code == 404
        wrong = await public.get("/metrics", headers={"authorization": "Bearer guess"})
        assert wrong.status_code == 404
        right = await public.get("/metrics", headers={"authorization": "Bearer s3cret"})
        assert right.status_code == 200 and "cloister_engine_ready" in right.text


@contextlib.asynccontextmanager
async def _public(app):
    async with app.router.lifespan_context(app):
        await start(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as client:
            yield client
