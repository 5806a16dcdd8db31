"""A client that goes away aborts its engine request, mid-stream or before the first byte."""

from __future__ import annotations

import asyncio
import json

from gateway.app import create_app
from gateway.settings import Settings
from tests.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.unit.conftest import start


def _scope(path: str, body: bytes) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
        "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("gw", 80),
    }


async def _run_and_disconnect(engine: DeterministicTestEngine, body: dict,
                              after_body_messages: int) -> list[dict]:
    app = create_app(Settings(insecure_plaintext=True), engine.running)
    raw = json.dumps(body).encode()
    sent: list[dict] = []
    hang_up = asyncio.Event()
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        bodies = [m for m in sent if m["type"] == "http.response.body" and m.get("body")]
        if len(bodies) >= after_body_messages:
            hang_up.set()

    async with app.router.lifespan_context(app):
        await start(app)
        if after_body_messages == 0:
            asyncio.get_running_loop().call_later(0.05, hang_up.set)
        await asyncio.wait_for(app(_scope("/v1/chat/completions", raw), receive, send), 5)
    return sent


async def test_disconnect_mid_stream_aborts_engine_request() -> None:
    engine = DeterministicTestEngine(token_delay=0.01)
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10_000, "stream": True}
    sent = await _run_and_disconnect(engine, body, after_body_messages=3)
    assert engine.unfinished == 0
    assert engine.aborted == 1
    chunks = [m for m in sent if m["type"] == "http.response.body" and m.get("body")]
    assert 3 <= len(chunks) < 100


async def test_disconnect_before_first_event_aborts_engine_request() -> None:
    engine = DeterministicTestEngine(token_delay=0.5)
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10_000, "stream": True}
    await _run_and_disconnect(engine, body, after_body_messages=0)
    assert engine.unfinished == 0
    assert engine.aborted == 1
