"""The Atoma confidential envelope: its sans-IO crypto, its error shape, the sequence
numbers and end marker inside the encryption. What every dialect shares is in
`test_dialect_contract.py`; attacks on streams in `test_client_attacks.py`."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from enclave import atoma, sse
from enclave.atoma.dialect import END_FIELD, SEQ_FIELD, AtomaResponder
from enclave.dialect import InnerRequest, OuterResponse
from enclave.errors import DecryptError, StaleCredentials
from enclave.keys import KeyRing
from testkit.doubles import CHAT_MODEL
from tests.clients import client_for

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
    impostor = atoma.EnvelopeSealer(b"\x00" * 32, atoma.NodeSigner()).seal(b"other")
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


def test_a_stale_node_key_has_its_own_class_and_code() -> None:
    ring, signer = KeyRing(), atoma.NodeSigner()
    stale = _envelope(ring, signer, node_dh_public_key=base64.b64encode(b"k" * 32).decode())
    with pytest.raises(atoma.StaleNodeKey) as err:
        atoma.open_request(atoma.ConfidentialRequest.parse(stale), ring, signer)
    refusal = atoma.AtomaServer(ring, signer).refuse(err.value)
    body = json.loads(refusal.body)["error"]
    assert (refusal.status, body["type"], body["code"]) == (400, "InvalidBody", "unknown_key")


async def test_gateway_errors_are_named_like_the_seed(gateway_app) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        r = await raw.post("/v1/confidential/chat/completions", json={"ciphertext": "x"})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "InvalidBody"
        r = await raw.post("/v1/confidential/chat/completions", content=b"{oops")
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
        node = (await raw.get("/v1/confidential/node")).json()
    assert base64.b64decode(node["node_dh_public_key"]) == \
        gateway_app.keyring.current().public_key


async def test_a_stale_node_key_makes_the_client_refetch(gateway_app) -> None:
    c = client_for(gateway_app, "atoma")
    dialect = await c.dialect()
    ring = gateway_app.keyring
    ring._grace = 0.0
    ring.rotate()
    outer, opener = dialect.seal(InnerRequest(
        "POST", "/v1/chat/completions", json.dumps(CHAT).encode()), stream=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        r = await raw.post(outer.path, content=outer.body)
    with pytest.raises(StaleCredentials):
        opener.whole(OuterResponse(r.status_code, (), r.content))
    await c.aclose()


def test_every_chunk_carries_its_sequence_and_the_last_one_the_end() -> None:
    ring, signer = KeyRing(), atoma.NodeSigner()
    session = _session(ring, signer)
    request = atoma.ConfidentialRequest.parse(session.seal_request(b"{}", model_name="m",
                                                                   stream=True))
    _, sealer = atoma.open_request(request, ring, signer)
    responder = AtomaResponder(sealer)
    engine_events = sse.event(b'{"id":"c","choices":[{"delta":{"content":"a"}}]}') + \
        sse.event(b'{"id":"c","choices":[{"delta":{"content":"b"}}]}') + sse.event(sse.DONE)
    wire = sse.data_of(responder.chunk(engine_events) + responder.end())
    assert wire[-1] == sse.DONE
    opened = [json.loads(session.open_response(json.loads(w))) for w in wire[:-1]]
    assert [o[SEQ_FIELD] for o in opened] == [0, 1, 2]
    assert [o.get(END_FIELD) for o in opened] == [None, None, True]
    assert opened[-1]["choices"] == [] and opened[-1]["id"] == "c"


async def test_the_client_strips_what_it_checked(gateway_app) -> None:
    c = client_for(gateway_app, "atoma")
    async with c.stream("POST", "/v1/chat/completions",
                        json.dumps({**CHAT, "stream": True}).encode()) as s:
        events = b"".join([x async for x in s.chunks()])
    await c.aclose()
    assert SEQ_FIELD.encode() not in events and END_FIELD.encode() not in events
    assert events.endswith(b"data: [DONE]\n\n")
