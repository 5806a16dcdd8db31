"""A client that goes away aborts its engine request, mid-stream or before the first byte."""

from __future__ import annotations

import asyncio
import json

from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.asgi import body_messages, call_until_hang_up, http_scope
from tests.unit.conftest import start


async def _run_and_disconnect(engine: DeterministicTestEngine, body: dict,
                              after_body_messages: int) -> list[dict]:
    """Hang up after that many body messages, or (0) once the engine holds the request."""
    app = create_app(ServeConfig.of(insecure_plaintext=True, stream_interval_ms=0), engine.running)
    raw = json.dumps(body).encode()
    if after_body_messages == 0:
        engine.pause_after = 0
    sent: list[dict] = []

    def hang_up_after(message: dict) -> bool:
        sent.append(message)
        held = engine.pause_after is not None and engine.paused.is_set()
        return held and len(body_messages(sent)) >= after_body_messages > 0

    hang_up = asyncio.Event()
    async with app.router.lifespan_context(app):
        await start(app)
        if after_body_messages == 0:
            async def when_held() -> None:
                await engine.paused.wait()
                hang_up.set()
            asyncio.get_running_loop().create_task(when_held())
        await call_until_hang_up(app, http_scope("POST", "/v1/chat/completions", body=raw),
                                 raw, hang_up_after=hang_up_after, hang_up=hang_up)
    return sent


async def test_disconnect_mid_stream_aborts_engine_request() -> None:
    engine = DeterministicTestEngine()
    engine.pause_after = 50  # the engine holds the request after 50 events
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10_000, "stream": True}
    sent = await _run_and_disconnect(engine, body, after_body_messages=1)
    assert engine.unfinished == 0
    assert engine.aborted == 1
    assert b"".join(body_messages(sent)).count(b"data: ") == 50


async def test_disconnect_before_first_event_aborts_engine_request() -> None:
    engine = DeterministicTestEngine()
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10_000, "stream": True}
    await _run_and_disconnect(engine, body, after_body_messages=0)
    assert engine.unfinished == 0
    assert engine.aborted == 1
