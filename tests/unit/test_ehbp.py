"""EHBP: the sans-IO core, the gateway's handling of `Ehbp-Encapsulated-Key`, the client,
and the proxy speaking it."""

from __future__ import annotations

import json

import httpx
import pytest

from enclave import ehbp
from enclave.errors import DecryptError, UnknownKeyError
from enclave.keys import KeyRing
from enclave.ohttp import decode_key_configs
from proxy.app import create_proxy_app
from proxy.ehbp_client import EHBPClient
from proxy.ohttp_client import GatewayResponseError
from tests.doubles import CHAT_MODEL, InterceptingTransport

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "secret words"}],
        "max_tokens": 4}


def test_round_trip_and_one_byte_at_a_time() -> None:
    ring = KeyRing()
    sealer = ehbp.RequestSealer(ehbp.key_config(ring.current()))
    body = sealer.seal(b"hello ") + sealer.seal(b"world")
    plaintext, responder = ehbp.open_request(ring, sealer.encapsulated_key_header, body)
    assert plaintext == b"hello world"
    wire = responder.seal(b"data: 1\n\n") + responder.seal(b"data: 2\n\n")
    opener = sealer.response_opener(responder.nonce_header)
    out = []
    for i in range(len(wire)):
        out += opener.push(wire[i:i + 1])
    opener.finish()
    assert out == [b"data: 1\n\n", b"data: 2\n\n"]


def test_response_frames_cannot_be_reordered_or_altered() -> None:
    ring = KeyRing()
    sealer = ehbp.RequestSealer(ehbp.key_config(ring.current()))
    _, responder = ehbp.open_request(ring, sealer.encapsulated_key_header, sealer.seal(b"x"))
    first, second = responder.seal(b"one"), responder.seal(b"two")
    with pytest.raises(DecryptError):
        sealer.response_opener(responder.nonce_header).push(second + first)
    bad = bytearray(first)
    bad[-1] ^= 1
    with pytest.raises(DecryptError):
        sealer.response_opener(responder.nonce_header).push(bytes(bad))
    opener = sealer.response_opener(responder.nonce_header)
    opener.push(first[:-3])
    with pytest.raises(DecryptError):
        opener.finish()  # a partial frame


def test_stale_key_after_grace_is_a_key_config_problem() -> None:
    now = [0.0]
    ring = KeyRing(rotation_seconds=10, grace_seconds=1, clock=lambda: now[0])
    sealer = ehbp.RequestSealer(ehbp.key_config(ring.current()))
    body = sealer.seal(b"x")
    now[0] = 10.5
    assert ehbp.open_request(ring, sealer.encapsulated_key_header, body)[0] == b"x"  # grace
    now[0] = 12.0
    with pytest.raises(UnknownKeyError):
        ehbp.open_request(ring, sealer.encapsulated_key_header, body)


@pytest.mark.parametrize("header", ["zz", "00" * 31, "00" * 33])
def test_malformed_encapsulated_key_is_a_decrypt_error(header) -> None:
    with pytest.raises(DecryptError):
        ehbp.open_request(KeyRing(), header, b"")


@pytest.fixture
async def client(gateway_app):
    c = EHBPClient("http://gw", transport=httpx.ASGITransport(app=gateway_app))
    yield c
    await c.aclose()


async def test_keys_are_published_with_key_id_0_and_aes_256(gateway_app) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        r = await raw.get("/.well-known/hpke-keys")
    (config,) = decode_key_configs(r.content)
    assert (config.key_id, config.suites) == (0, (ehbp.SUITE,))
    assert config.public_key == gateway_app.state.keyring.current().public_key


async def test_chat_stream_models_and_errors_through_ehbp(client) -> None:
    r = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    assert json.loads(r.content)["choices"][0]["message"]["content"] == "echo: secret words tick"
    async with client.stream("POST", "/v1/chat/completions",
                             json.dumps({**CHAT, "stream": True}).encode()) as s:
        chunks = [c async for c in s.chunks()]
    assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    models = await client.request("GET", "/v1/models")
    assert json.loads(models.content)["data"][0]["id"] == CHAT_MODEL
    bad = await client.request("POST", "/v1/chat/completions", b"[not an object]")
    assert (bad.status, json.loads(bad.content)["error"]["code"]) == (400, "invalid_json")


async def test_secret_words_never_appear_on_the_ehbp_wire(gateway_app) -> None:
    recording = InterceptingTransport(gateway_app)
    seen = recording.wire
    c = EHBPClient("http://gw", transport=recording)
    r = await c.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    await c.aclose()
    assert b"secret words" in r.content
    assert seen and all(b"secret" not in blob for blob in seen)


async def test_gateway_answers_422_problem_for_unknown_key(gateway_app) -> None:
    other = ehbp.RequestSealer(ehbp.key_config(KeyRing().current()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        r = await raw.post("/v1/chat/completions", content=other.seal(b"{}"),
                           headers={ehbp.ENCAPSULATED_KEY_HEADER: other.encapsulated_key_header})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == ehbp.KEY_CONFIG_PROBLEM_TYPE


async def test_client_refetches_after_rotation(client, gateway_app) -> None:
    await client.key_config()
    ring = gateway_app.state.keyring
    ring._grace = 0.0
    ring.rotate()
    r = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    assert r.status == 200


async def test_proxy_speaks_ehbp(gateway_app) -> None:
    upstream = EHBPClient("http://gw", transport=httpx.ASGITransport(app=gateway_app))
    app = create_proxy_app(upstream)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://proxy") as local:
        r = await local.post("/v1/chat/completions", json={**CHAT, "model": "latest"})
        s = await local.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.json()["choices"][0]["message"]["content"] == "echo: secret words tick"
    assert s.text.endswith("data: [DONE]\n\n")


async def test_tampered_ehbp_response_is_refused(gateway_app) -> None:
    def flip_last(request, response, body: bytes) -> bytes:
        if request.method == "POST" and body:
            return body[:-1] + bytes([body[-1] ^ 1])
        return body

    c = EHBPClient("http://gw", transport=InterceptingTransport(gateway_app, damage=flip_last))
    with pytest.raises(GatewayResponseError):
        await c.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    await c.aclose()
