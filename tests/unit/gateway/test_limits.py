"""Limits and overload: per-client and gateway-wide concurrency, decided before any
decryption; output-token cap; slow bodies."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.asgi import scrape
from tests.clients import client_for
from tests.unit.conftest import start

SLOW = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 10, "stream": True}


async def _app(engine: DeterministicTestEngine, **settings):
    app = create_app(ServeConfig.of(**settings), engine.running)
    return app


async def _with(app, body):
    async with app.router.lifespan_context(app):
        await start(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            return await body(c, app)


async def _hold_one(c, engine):
    """A stream the engine holds (paused) until it is cancelled."""
    engine.pause_after = 1
    held = asyncio.create_task(c.post("/v1/chat/completions", json=SLOW))
    await engine.paused.wait()
    return held


async def _release(held):
    held.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held


async def test_second_request_from_a_busy_client_gets_429() -> None:
    engine = DeterministicTestEngine()
    app = await _app(engine, insecure_plaintext=True, max_per_client=1)

    async def body(c, app):
        held = await _hold_one(c, engine)
        second = await c.post("/v1/chat/completions", json=SLOW)
        await _release(held)
        return second

    r = await _with(app, body)
    assert (r.status_code, r.json()["error"]["code"]) == (429, "rate_limited")
    assert r.headers["retry-after"] == "2"


async def test_full_gateway_answers_503_before_any_decryption() -> None:
    engine = DeterministicTestEngine()
    app = await _app(engine, insecure_plaintext=True, max_in_flight=1, max_per_client=10)

    async def body(c, app):
        held = await _hold_one(c, engine)
        junk = await c.post("/.well-known/ohttp-gateway", content=b"\x01" * 60,
                            headers={"content-type": "message/ohttp-req"})
        await _release(held)
        metrics = await scrape(app)
        return junk, metrics

    r, metrics = await _with(app, body)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "overloaded")
    assert "retry-after" in r.headers
    assert 'cloister_rejected_requests_total{reason="overloaded"} 1.0' in metrics
    assert "cloister_crypto_failures_total{" not in metrics  # nothing was decrypted


async def test_engine_queue_depth_also_sheds_load() -> None:
    engine = DeterministicTestEngine()
    engine.unfinished = 5  # the engine reports a backlog
    app = await _app(engine, insecure_plaintext=True, max_engine_queue=5)

    async def body(c, app):
        return await c.post("/v1/chat/completions", json={**SLOW, "stream": False})

    r = await _with(app, body)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "overloaded")


async def test_max_tokens_cap_is_answered_inside_the_encryption() -> None:
    engine = DeterministicTestEngine()
    app = await _app(engine, max_tokens=8)

    async def body(c, app):
        client = client_for(app)
        try:
            big = await client.request("POST", "/v1/chat/completions",
                                       json.dumps({**SLOW, "stream": False,
                                                   "max_tokens": 100}).encode())
            small = await client.request("POST", "/v1/chat/completions",
                                         json.dumps({**SLOW, "stream": False,
                                                     "max_tokens": 4}).encode())
        finally:
            await client.aclose()
        return big, small

    big, small = await _with(app, body)
    error = json.loads(big.body)["error"]
    assert (big.status, error["code"], error["param"]) == (400, "invalid_request", "max_tokens")
    assert small.status == 200
    assert len(engine.seen_bodies) == 1


async def test_slow_body_times_out_with_408() -> None:
    app = await _app(DeterministicTestEngine(), insecure_plaintext=True,
                     body_timeout=0.1)
    sent: list[dict] = []

    async def receive():
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "client": ("10.0.0.1", 1),
             "server": ("gw", 80)}
    async with app.router.lifespan_context(app):
        await start(app)
        await asyncio.wait_for(app(scope, receive, send), 5)
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("path", ["/health", "/ready"])
async def test_control_routes_are_never_shed(path) -> None:
    engine = DeterministicTestEngine()
    engine.unfinished = 10_000
    app = await _app(engine, max_engine_queue=1, max_in_flight=1)

    async def body(c, app):
        return await c.get(path)

    assert (await _with(app, body)).status_code == 200
