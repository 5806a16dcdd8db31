"""The Atoma confidential envelope: sans-IO, gateway routes, client and proxy."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from enclave import atoma
from enclave.errors import DecryptError
from enclave.keys import KeyRing
from proxy.app import create_proxy_app
from proxy.atoma_client import AtomaClient
from proxy.ohttp_client import GatewayResponseError
from tests.doubles import CHAT_MODEL, EMBEDDING_MODEL, InterceptingTransport

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "atoma canary"}],
        "max_tokens": 3}


def _session(ring: KeyRing, signer: atoma.NodeSigner) -> atoma.ClientSession:
    return atoma.ClientSession(ring.current().public_key, signer.public_key)


def test_round_trip_hash_and_sui_signature() -> None:
    ring, signer = KeyRing(), atoma.NodeSigner()
    session = _session(ring, signer)
    envelope = session.seal_request(b'{"a": 1}', model_name="m", stream=False)
    request = atoma.ConfidentialRequest.parse(envelope)
    plaintext, sealer = atoma.open_request(request, ring, signer)
    assert plaintext == b'{"a": 1}'
    response = sealer.seal(b"answer", usage={"total_tokens": 3})
    signature = base64.b64decode(response["signature"])
    assert signature[0] == 0 and len(signature) == 97 and signature[65:] == signer.public_key
    assert response["usage"] == {"total_tokens": 3}
    assert session.open_response(response) == b"answer"
    assert sealer.seal(b"answer")["nonce"] != response["nonce"]  # fresh nonce per chunk


def test_forged_or_altered_responses_are_refused() -> None:
    ring, signer = KeyRing(), atoma.NodeSigner()
    session = _session(ring, signer)
    request = atoma.ConfidentialRequest.parse(session.seal_request(b"{}", model_name="m",
                                                                   stream=False))
    _, sealer = atoma.open_request(request, ring, signer)
    good = sealer.seal(b"answer")
    impostor = atoma.ResponseSealer(b"\x00" * 32, atoma.NodeSigner()).seal(b"other")
    for bad in ({**good, "signature": impostor["signature"]},
                {**good, "response_hash": impostor["response_hash"]},
                {**good, "ciphertext": impostor["ciphertext"]}, {}):
        with pytest.raises(DecryptError):
            session.open_response(bad)


def _envelope(ring, signer, **changes):
    env = _session(ring, signer).seal_request(b'{"x": 1}', model_name="m", stream=False)
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


@pytest.mark.parametrize(("changes", "message"), [
    ({"stream": None}, "stream"), ({"stream": "yes"}, "stream"),
    ({"nonce": "!!!"}, "base64"), ({"salt": base64.b64encode(b"s").decode()}, "16 bytes"),
    ({"plaintext_body_hash": base64.b64encode(b"h" * 32).decode()}, "hash"),
    ({"node_dh_public_key": base64.b64encode(b"k" * 32).decode()}, "not current"),
    ({"stack_small_id": 0}, "stack_small_id"), ({"model_name": 5}, "model_name"),
])
def test_every_malformed_field_is_invalid_body(changes, message) -> None:
    ring, signer = KeyRing(), atoma.NodeSigner()
    with pytest.raises(atoma.InvalidBody, match=message):
        request = atoma.ConfidentialRequest.parse(_envelope(ring, signer, **changes))
        atoma.open_request(request, ring, signer)


def test_ciphertext_of_another_request_gets_the_generic_message() -> None:
    ring, signer = KeyRing(), atoma.NodeSigner()
    first = _envelope(ring, signer)
    second = _envelope(ring, signer)
    mixed = {**second, "ciphertext": first["ciphertext"], "nonce": first["nonce"]}
    with pytest.raises(atoma.InvalidBody) as err:
        atoma.open_request(atoma.ConfidentialRequest.parse(mixed), ring, signer)
    assert str(err.value) == atoma.OPEN_FAILED


@pytest.fixture
async def client(gateway_app):
    c = AtomaClient("http://gw", transport=httpx.ASGITransport(app=gateway_app))
    yield c
    await c.aclose()


async def test_chat_stream_and_embeddings_through_the_envelope(client) -> None:
    r = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
    assert json.loads(r.content)["choices"][0]["message"]["content"] == "echo: atoma canary"
    body = json.dumps({**CHAT, "stream": True}).encode()
    async with client.stream("POST", "/v1/chat/completions", body) as s:
        chunks = [c async for c in s.chunks()]
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert b"echo:" in chunks[0]
    r = await client.request("POST", "/v1/embeddings",
                             json.dumps({"model": EMBEDDING_MODEL, "input": "x"}).encode())
    assert len(json.loads(r.content)["data"][0]["embedding"]) == 384


async def test_gateway_errors_are_named_like_the_seed(gateway_app) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        r = await raw.post("/v1/confidential/chat/completions", json={"ciphertext": "x"})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "InvalidBody"
        r = await raw.post("/v1/confidential/chat/completions", content=b"{oops")
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_body")
        node = (await raw.get("/v1/confidential/node")).json()
    assert base64.b64decode(node["node_dh_public_key"]) == \
        gateway_app.state.keyring.current().public_key


async def test_stream_without_done_is_reported_truncated(gateway_app) -> None:
    def cut(request, response, body: bytes) -> bytes:
        if request.url.path.endswith("chat/completions"):
            return body.replace(b"data: [DONE]\n\n", b"")
        return body

    c = AtomaClient("http://gw", transport=InterceptingTransport(gateway_app, damage=cut))
    with pytest.raises(GatewayResponseError, match="truncated"):
        async with c.stream("POST", "/v1/chat/completions",
                            json.dumps({**CHAT, "stream": True}).encode()) as s:
            [x async for x in s.chunks()]
    await c.aclose()


async def test_proxy_speaks_atoma_and_nothing_readable_crosses(gateway_app) -> None:
    recording = InterceptingTransport(gateway_app)
    wire = recording.wire
    app = create_proxy_app(AtomaClient("http://gw", transport=recording))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://proxy") as local:
        r = await local.post("/v1/chat/completions", json={**CHAT, "model": "latest"})
        s = await local.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert "atoma canary" in r.json()["choices"][0]["message"]["content"]
    assert s.text.endswith("data: [DONE]\n\n")
    posts = [w for w in wire if b"ciphertext" in w]
    assert posts and not any(b"atoma canary" in w for w in wire)
