"""Under real uvicorn: slowloris connections and a flood of disconnecting clients do not
stop the gateway from serving everyone else."""

from __future__ import annotations

import socket

import httpx

from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.served import served
from tests.waiting import wait_until

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}


def test_slowloris_and_disconnect_floods_leave_others_served(tmp_path) -> None:
    engine = DeterministicTestEngine(token_delay=0.01)
    token = tmp_path / "token"
    token.write_text("scraper")
    app = create_app(ServeConfig.of(insecure_plaintext=True, body_timeout=0.5,
                                    metrics_token_file=token), engine.running)
    slow = []
    with served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        try:
            for _ in range(40):  # half-sent headers, never finished
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
                slow.append(sock)
            for _ in range(20):  # bodies promised and never sent
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
                slow.append(sock)
            for _ in range(30):  # streams abandoned after the request line of the answer
                sock = socket.create_connection(("127.0.0.1", port))
                body = b'{"model": "test-chat", "messages": [], "max_tokens": 500, "stream": true}'
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                sock.recv(64)
                sock.close()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                assert client.get("/health").status_code == 200
                r = client.post("/v1/chat/completions", json=CHAT)
                assert r.status_code == 200
                # the promised bodies time out (408), abandoned streams abort
                timed_out = 'cloister_rejected_requests_total{reason="request_timeout"} 20.0'
                metrics = wait_until(
                    lambda: client.get("/metrics",
                                       headers={"authorization": "Bearer scraper"}).text,
                    lambda metrics: timed_out in metrics and engine.unfinished == 0)
            assert timed_out in metrics
            assert engine.unfinished == 0
        finally:
            for sock in slow:
                sock.close()
