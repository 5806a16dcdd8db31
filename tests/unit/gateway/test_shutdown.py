"""Graceful shutdown under real uvicorn: an in-flight stream finishes; new connections
are refused."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import uvicorn

from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.waiting import wait_until


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_in_flight_stream_finishes_after_shutdown_is_asked() -> None:
    engine = DeterministicTestEngine(token_delay=0.05)
    app = create_app(ServeConfig.of(insecure_plaintext=True), engine.running)
    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           lifespan="on", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, interval=0.02)
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 20, "stream": True}
    with (httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client,
          client.stream("POST", "/v1/chat/completions", json=body) as r):
        lines = r.iter_lines()
        next(lines)
        server.should_exit = True  # what SIGTERM does
        rest = list(lines)
    thread.join(15)
    assert not thread.is_alive()
    assert "data: [DONE]" in rest
    assert engine.aborted == 0
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        refused = False
    except httpx.TransportError:
        refused = True
    assert refused
