"""Continuum: sealed secrets and fields, the gateway's routes, the client and the proxy."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from enclave import continuum
from enclave.errors import DecryptError, UnknownKeyError
from enclave.keys import KeyRing
from proxy.app import create_proxy_app
from proxy.continuum_client import ContinuumClient
from proxy.ohttp_client import GatewayResponseError
from tests.doubles import CHAT_MODEL, EMBEDDING_MODEL, InterceptingTransport

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "continuum canary"}],
        "max_tokens": 3}


def test_secret_round_trip_and_wrong_key() -> None:
    ring = KeyRing()
    secret = os.urandom(32)
    body = continuum.seal_secret(ring.current().key_config(), secret)
    assert continuum.open_secret(ring, body) == secret
    with pytest.raises(UnknownKeyError):
        continuum.open_secret(ring, {**body, "key_id": 77})
    with pytest.raises(DecryptError):
        continuum.open_secret(KeyRing(), body)  # another enclave's key, same key id


def test_fields_bind_direction_sequence_final_flag_and_name() -> None:
    secret = os.urandom(32)
    client = continuum.FieldCipher.for_client("ab" * 16, secret)
    server = continuum.FieldCipher("ab" * 16, secret, client.request_nonce)
    sealed = client.seal_request_field("messages", b"[1]")
    assert continuum.is_encrypted_field(sealed)
    assert server.open_request_field("messages", sealed) == b"[1]"
    with pytest.raises(DecryptError):
        server.open_request_field("prompt", sealed)  # another field's name
    reply = server.seal_response("choices", 3, b"x", final=False)
    assert client.open_response("choices", 3, reply, final=False) == b"x"
    for seq, final in ((4, False), (3, True)):
        with pytest.raises(DecryptError):
            client.open_response("choices", seq, reply, final=final)
    with pytest.raises(DecryptError):
        client.open_request_field("messages", sealed.replace("ab", "cd", 1))


def test_secret_store_expires_and_stays_bounded() -> None:
    now = [0.0]
    store = continuum.SecretStore(ttl=10, max_secrets=2, clock=lambda: now[0])
    first, _ = store.register(b"1" * 32)
    store.register(b"2" * 32)
    store.register(b"3" * 32)
    with pytest.raises(continuum.UnknownSecretError):
        store.get(first)  # evicted
    second, _ = store.register(b"4" * 32)
    now[0] = 11
    with pytest.raises(continuum.UnknownSecretError):
        store.get(second)  # expired
    assert "[redacted]" in repr(store)


@pytest.fixture
async def client(gateway_app):
    c = ContinuumClient("http://gw", transport=httpx.ASGITransport(app=gateway_app))
    yield c
    await c.aclose()


async def test_chat_stream_and_embeddings(client) -> None:
    r = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    assert json.loads(r.content)["choices"][0]["message"]["content"] == "echo: continuum canary"
    async with client.stream("POST", "/v1/chat/completions",
                             json.dumps({**CHAT, "stream": True}).encode()) as s:
        chunks = [c async for c in s.chunks()]
    assert chunks[-1] == b"data: [DONE]\n\n"
    text = "".join(json.loads(c[6:])["choices"][0]["delta"]["content"] for c in chunks[:-1])
    assert text == "echo: continuum canary"
    r = await client.request("POST", "/v1/embeddings",
                             json.dumps({"model": EMBEDDING_MODEL, "input": "x"}).encode())
    assert len(json.loads(r.content)["data"][0]["embedding"]) == 384


async def test_wire_shape_keeps_metadata_plaintext_and_seals_the_rest(gateway_app) -> None:
    recording = InterceptingTransport(gateway_app)
    wire = recording.wire
    c = ContinuumClient("http://gw", transport=recording)
    await c.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    await c.aclose()
    sent, answer = json.loads(wire[-2]), json.loads(wire[-1])
    assert continuum.is_encrypted_field(sent["messages"]) and sent["model"] == CHAT_MODEL
    assert continuum.is_encrypted_field(answer["choices"])
    assert answer["usage"]["completion_tokens"] == 3 and answer["model"] == CHAT_MODEL
    assert not any(b"continuum canary" in w or b"echo:" in w for w in wire)


async def test_unknown_secret_is_re_registered_once(client, gateway_app) -> None:
    await client.secret()
    gateway_app.state.continuum_secrets._held.clear()
    r = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    assert r.status == 200


async def test_engine_errors_keep_their_code_but_not_their_message(client) -> None:
    r = await client.request("POST", "/v1/chat/completions",
                             json.dumps({**CHAT, "model": "nope"}).encode())
    error = json.loads(r.content)["error"]
    assert (r.status, error["code"]) == (404, "model_not_found")
    assert "nope" not in error["message"]


async def test_truncated_or_reordered_stream_is_refused(gateway_app) -> None:
    def cut(body: bytes) -> bytes:  # drop the final message, keep [DONE]
        events = body.split(b"\n\n")
        return b"\n\n".join(events[:-3] + events[-2:])

    def swap(body: bytes) -> bytes:
        events = body.split(b"\n\n")
        events[0], events[1] = events[1], events[0]
        return b"\n\n".join(events)

    for damage in (cut, swap):
        def on_streams(request, response, body: bytes, damage=damage) -> bytes:
            if "text/event-stream" in response.headers.get("content-type", ""):
                return damage(body)
            return body

        c = ContinuumClient("http://gw",
                            transport=InterceptingTransport(gateway_app, damage=on_streams))
        with pytest.raises(GatewayResponseError):
            async with c.stream("POST", "/v1/chat/completions",
                                json.dumps({**CHAT, "stream": True}).encode()) as s:
                [x async for x in s.chunks()]
        await c.aclose()


async def test_gateway_rejects_bad_secrets_and_fields(gateway_app) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        r = await raw.post("/v1/secrets", json={"key_id": 0, "encapsulated_key": "00" * 32,
                                                "ciphertext": "00" * 48})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "decryption_failed")
        fake = ":".join(["ab" * 16, "cd" * 16, "ef" * 12, "00" * 20])
        r = await raw.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": fake})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "unknown_secret")


async def test_proxy_speaks_continuum(gateway_app) -> None:
    app = create_proxy_app(ContinuumClient("http://gw",
                                           transport=httpx.ASGITransport(app=gateway_app)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://proxy") as local:
        r = await local.post("/v1/chat/completions", json={**CHAT, "model": "latest"})
        s = await local.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.json()["choices"][0]["message"]["content"] == "echo: continuum canary"
    assert s.text.endswith("data: [DONE]\n\n")
