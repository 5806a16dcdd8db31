"""The attacks of the hostile-load review, each written before its fix, under real uvicorn
with the gateway's own listener options (`gateway.http_protocol`):

- a giant request head is refused before it is buffered (it was accepted whole);
- a connection that never finishes its head is closed (slowloris);
- a stream whose reader stops reading gives its engine request and admission slot back
  (it held them forever: a few such clients made the gateway answer 503 to everyone);
- `/v1/secrets` floods are rate-limited and evict only the flooder's own secrets;
- a dying engine: the stream in flight ends with a sealed error, `/health` and `/ready`
  say so at once, and the CLI's failure hook fires (the process exits non-zero);
- the per-client limit counts an API key, not the address everyone behind a relay shares.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import httpx
import pytest

from enclave import continuum
from gateway.app import create_app
from gateway.config import ServeConfig
from gateway.http_protocol import MAX_HEAD_BYTES, listener_options
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.clients import client_for
from tests.served import served
from tests.unit.conftest import start
from tests.waiting import wait_until

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}


def _connect(url: str, *, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf is not None:  # a reader that holds almost nothing in its kernel buffer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    sock.settimeout(10)
    return sock


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def test_a_giant_header_is_refused_before_it_is_buffered() -> None:
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running)
    with served(app, **listener_options()) as url:
        sock = _connect(url)
        before = _rss_kib()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Big: ")
        sent = 0
        with pytest.raises(OSError):  # refused and closed while we are still sending
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        assert sent < 8 * 1024 * 1024
        assert _rss_kib() - before < 16 * 1024  # not buffered
        sock.close()
        assert httpx.get(f"{url}/health").status_code == 200
        small = _connect(url)
        small.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES * 2)
                      + b"\r\n\r\n")
        assert small.recv(100).startswith(b"HTTP/1.1 400")
        small.close()


def test_a_head_that_never_ends_is_cut_off() -> None:
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running)
    with served(app, **listener_options(head_timeout=0.5)) as url:
        sock = _connect(url)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n")  # and nothing more
        assert sock.recv(100) == b""  # closed by the gateway (waiting would time out)
        sock.close()
        with httpx.Client() as keep_alive:  # a slow reader of answers is not cut off
            for _ in range(2):
                assert keep_alive.get(f"{url}/health").status_code == 200


def test_a_reader_that_stops_reading_gives_back_its_slot_and_engine_request() -> None:
    engine = DeterministicTestEngine()
    # Three slots per client: the silent three fill them, so the request after them from
    # the same address is served only if their slots were given back.
    app = create_app(ServeConfig.of(insecure_plaintext=True, write_timeout=0.5,
                              stream_interval_ms=0, max_per_client=3), engine.running)
    with served(app, **listener_options()) as url:
        silent = []
        for _ in range(3):
            sock = _connect(url, rcvbuf=1024)
            body = json.dumps({**CHAT, "max_tokens": 200_000, "stream": True}).encode()
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            silent.append(sock)  # never read
        wait_until(lambda: engine.aborted, lambda aborted: aborted >= 3)
        assert engine.aborted == 3 and engine.unfinished == 0
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200
        for sock in silent:
            sock.close()


async def test_a_secret_flood_evicts_only_the_flooders_secrets(make_app) -> None:
    app = make_app(secrets_per_client=8, secret_registrations_per_second=1000.0,
                   secret_registration_burst=1000)
    store = app.dialects.named("continuum").secrets
    async with app.router.lifespan_context(app):
        await start(app)
        victim = client_for(app, "continuum", transport=httpx.ASGITransport(
            app=app, client=("10.0.0.1", 1000)))
        reply = await victim.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
        assert reply.status == 200
        config = app.keyring.current().key_config()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(
                app=app, client=("10.0.0.2", 1000)), base_url="http://gw") as flooder:
            for _ in range(200):
                sealed = continuum.seal_secret(config, os.urandom(continuum.SECRET_SIZE))
                assert (await flooder.post(continuum.SECRETS_PATH, json=sealed)).status_code \
                    == 200
        assert len(store) == 1 + 8  # the victim's, and the flooder's last 8
        again = await victim.request("POST", "/v1/chat/completions",
                                     json.dumps(CHAT).encode())
        assert again.status == 200  # the victim's secret survived
        await victim.aclose()


async def test_secret_registrations_are_rate_limited_per_client(make_app) -> None:
    app = make_app(secret_registrations_per_second=1.0, secret_registration_burst=5)
    async with app.router.lifespan_context(app):
        await start(app)
        config = app.keyring.current().key_config()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(
                app=app, client=("10.0.0.2", 1000)), base_url="http://gw") as flooder:
            answers = [await flooder.post(continuum.SECRETS_PATH, json=continuum.seal_secret(
                config, os.urandom(continuum.SECRET_SIZE))) for _ in range(20)]
        statuses = [a.status_code for a in answers]
        assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
        assert answers[-1].headers["retry-after"] and \
            answers[-1].json()["error"]["code"] == "rate_limited"
        other = client_for(app, "continuum", transport=httpx.ASGITransport(
            app=app, client=("10.0.0.3", 1000)))
        assert (await other.request("POST", "/v1/chat/completions",
                                    json.dumps(CHAT).encode())).status == 200
        await other.aclose()


@pytest.mark.parametrize("protocol", ["ohttp", "ehbp", "atoma", "continuum"])
async def test_an_engine_that_dies_mid_stream(protocol) -> None:
    engine = DeterministicTestEngine()
    engine.pause_after = 3
    failures: list[bool] = []
    app = create_app(ServeConfig.of(), engine.running,
                     on_engine_failure=lambda: failures.append(True))
    async with app.router.lifespan_context(app):
        await start(app)
        client = client_for(app, protocol)
        body = json.dumps({**CHAT, "max_tokens": 100, "stream": True}).encode()
        checks_before_kill: list[int] = []

        async def kill_when_streaming() -> None:
            await engine.paused.wait()  # three tokens out, the request in flight
            engine.kill()
            checks_before_kill.append(engine.health_checks)

        killer = asyncio.create_task(kill_when_streaming())
        async with client.stream("POST", "/v1/chat/completions", body) as stream:
            received = [chunk async for chunk in stream.chunks()]
        await killer
        text = b"".join(received)
        assert b'"engine_failed"' in text  # a sealed error the client opened
        assert text.rstrip().endswith(b"data: [DONE]")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as raw:
            async with asyncio.timeout(30):
                while not failures:
                    await asyncio.sleep(0.05)
            # noticed by the first health check after the kill (one every WATCH_SECONDS)
            assert engine.health_checks == checks_before_kill[0] + 1
            health, ready = await raw.get("/health"), await raw.get("/ready")
        assert (health.status_code, health.json()["error"]["code"]) == (503, "engine_failed")
        assert ready.status_code == 503
        await client.aclose()


def test_the_per_client_limit_counts_addresses_not_what_a_request_claims() -> None:
    from gateway.limits import client_key

    relay = {"client": ("10.9.9.9", 1)}
    alice = {**relay, "headers": [(b"authorization", b"Bearer alice-key")]}
    assert client_key(alice) == client_key(relay) == "10.9.9.9"
    assert client_key({"client": ("10.9.9.8", 1)}) != client_key(relay)


async def test_a_client_that_leaves_before_a_whole_answer_aborts_it() -> None:
    """Non-streamed: vLLM's answer comes whole, so nothing is written until it is done; a
    client that leaves before then stops the engine's work (it ran to the end before)."""
    from tests.asgi import call_until_hang_up, http_scope

    engine = DeterministicTestEngine(token_delay=0.01)
    app = create_app(ServeConfig.of(insecure_plaintext=True), engine.running)
    body = json.dumps({**CHAT, "max_tokens": 5000}).encode()
    hang_up = asyncio.Event()
    async with app.router.lifespan_context(app):
        await start(app)

        async def leave_when_working() -> None:
            await engine.generating_whole.wait()
            hang_up.set()

        leaver = asyncio.create_task(leave_when_working())
        await call_until_hang_up(app, http_scope("POST", "/v1/chat/completions", body=body),
                                 body, hang_up_after=lambda _m: False, hang_up=hang_up)
        await leaver
    assert engine.aborted == 1 and engine.unfinished == 0  # stopped, not run to the end
