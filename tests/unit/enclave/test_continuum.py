"""Continuum: sealed secrets and fields, the secret store, and the wire shape its seed
asks for. What every dialect shares is in `test_dialect_contract.py`."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from enclave import continuum
from enclave.errors import DecryptError, UnknownKeyError, UnknownSecretError
from enclave.keys import KeyRing
from testkit.doubles import CHAT_MODEL, InterceptingTransport
from tests.clients import client_for

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
    with pytest.raises(UnknownSecretError):
        store.get(first)  # evicted
    second, _ = store.register(b"4" * 32)
    now[0] = 11
    with pytest.raises(UnknownSecretError):
        store.get(second)  # expired
    assert "[redacted]" in repr(store)


@pytest.fixture
async def client(gateway_app):
    c = client_for(gateway_app, "continuum")
    yield c
    await c.aclose()


async def test_wire_shape_keeps_metadata_plaintext_and_seals_the_rest(gateway_app) -> None:
    recording = InterceptingTransport(gateway_app)
    wire = recording.wire
    c = client_for(gateway_app, "continuum", transport=recording)
    await c.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    await c.aclose()
    sent, answer = json.loads(wire[-2]), json.loads(wire[-1])
    assert continuum.is_encrypted_field(sent["messages"]) and sent["model"] == CHAT_MODEL
    assert continuum.is_encrypted_field(answer["choices"])
    assert answer["usage"]["completion_tokens"] == 3 and answer["model"] == CHAT_MODEL
    assert not any(b"continuum canary" in w or b"echo:" in w for w in wire)


async def test_unknown_secret_is_re_registered_once(client, gateway_app) -> None:
    first = await client.dialect()
    gateway_app.dialects.named("continuum").secrets.clear()
    r = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    assert r.status == 200
    assert (await client.dialect()).secret_id != first.secret_id


async def test_engine_errors_keep_their_code_in_the_clear_and_the_rest_sealed(gateway_app
                                                                             ) -> None:
    recording = InterceptingTransport(gateway_app)
    c = client_for(gateway_app, "continuum", transport=recording)
    r = await c.request("POST", "/v1/chat/completions",
                        json.dumps({**CHAT, "model": "nope"}).encode())
    await c.aclose()
    assert (r.status, json.loads(r.body)["error"]["code"]) == (404, "model_not_found")
    assert "nope" in json.loads(r.body)["error"]["message"]  # vLLM's message, opened
    on_the_wire = json.loads(recording.wire[-1])
    assert on_the_wire["error"]["code"] == "model_not_found"
    assert "nope" not in on_the_wire["error"]["message"]
    assert continuum.is_encrypted_field(on_the_wire[continuum.ERROR_FIELD])


async def test_gateway_rejects_bad_secrets_and_fields(gateway_app) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        r = await raw.post("/v1/secrets", json={"key_id": 0, "encapsulated_key": "00" * 32,
                                                "ciphertext": "00" * 48})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "decryption_failed")
        fake = ":".join(["ab" * 16, "cd" * 16, "ef" * 12, "00" * 20])
        r = await raw.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": fake})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "unknown_secret")


async def test_a_sealed_field_with_odd_length_hex_is_refused_not_a_500(gateway_app) -> None:
    """Found by `benchmarks/fuzz.py`: a field matching the sealed-field shape but with an
    odd number of hex digits passed `accepts` and crashed the opener (ValueError: 500)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        odd = ":".join(["ab" * 16, "cd" * 16, "ef" * 12, "0" * 41])
        r = await raw.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": odd})
        assert r.status_code == 400
        assert (await raw.get("/health")).status_code == 200
