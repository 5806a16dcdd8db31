"""Azure's OHTTP convention (`enclave.ohttp.azure`) as a client written from its
description sees it: key configurations as hex at /discover, one RFC 9458 encapsulated
request at /score, the answer's status and media type outside and its content in
draft-ohai-chunked-ohttp-01 chunks (LEB128 lengths; the final chunk after a zero, with
its own length). The opener here is the test's own, on `cryptography` (`tests.rfc9458_client`
for the request); Microsoft's `ohttpy` runs in `tests/contract/test_outside_clients.py`."""

from __future__ import annotations

import json

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.ohttp.azure import leb128
from enclave.receipts import digest, receipt_of_event, split_receipt, verify
from testkit.doubles import CHAT_MODEL
from tests import rfc9458_client as rfc
from tests.unit.conftest import running

CHAT = {"model": CHAT_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
KEY_PROBLEM = "https://iana.org/assignments/http-problem-types#ohttp-key"


def _read_leb128(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def open_draft_chunks(sealed: rfc.Encapsulated, body: bytes) -> list[bytes]:
    """Every chunk's plaintext; the last one the final chunk (AAD "final")."""
    key, base = sealed.response_keys(body[:rfc.RESPONSE_NONCE_SIZE])
    aead, at, out, counter = AESGCM(key), rfc.RESPONSE_NONCE_SIZE, [], 0
    while at < len(body):
        length, at = _read_leb128(body, at)
        final = length == 0
        if final:
            length, at = _read_leb128(body, at)
        nonce = (int.from_bytes(base, "big") ^ counter).to_bytes(len(base), "big")
        out.append(aead.decrypt(nonce, body[at:at + length], b"final" if final else b""))
        at, counter = at + length, counter + 1
        if final:
            assert at == len(body), "bytes after the final chunk"
            return out
    raise AssertionError("no final chunk")


async def _score(app, message: bytes, *, key_id: int | None = None,
                 content_type: str = "message/ohttp-chunked-req"
                 ) -> tuple[httpx.Response, rfc.Encapsulated]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as http:
        keys = bytes.fromhex((await http.get("/discover")).text)
        assert keys == (await http.get("/.well-known/ohttp-gateway")).content
        own_id, public = rfc.first_key_config(keys)
        sealed = rfc.Encapsulated(own_id if key_id is None else key_id, public, message)
        answer = await http.post("/score", content=sealed.data,
                                 headers={"content-type": content_type})
    return answer, sealed


def _chat(**changes: object) -> bytes:
    return rfc.bhttp_request("POST", "/v1/chat/completions",
                             [("content-type", "application/json")],
                             json.dumps({**CHAT, **changes}).encode())


@pytest.mark.parametrize(("n", "encoded"), [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"),
                                            (300, "ac02"), (16384, "808001")])
def test_lengths_are_leb128(n, encoded) -> None:
    assert leb128(n).hex() == encoded and _read_leb128(leb128(n), 0) == (n, len(encoded) // 2)


async def test_a_whole_answer_is_one_final_chunk_under_the_outer_status(make_app) -> None:
    async with running(make_app()) as app:
        answer, sealed = await _score(app, _chat())
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    [content] = open_draft_chunks(sealed, answer.content)
    assert json.loads(content)["usage"]["completion_tokens"] == 3
    # its receipt, the last member (Azure's clients skip it), signed by the bound key
    body, wire = split_receipt(content)
    receipt = verify(wire, bound_key=app.receipts.signer.public_key, request=sealed.data,
                     response_digest=digest(body))
    assert receipt.fields["model"] == CHAT_MODEL


async def test_a_streamed_answer_comes_in_sealed_chunks_and_an_authenticated_end(
        make_app) -> None:
    async with running(make_app()) as app:
        answer, sealed = await _score(app, _chat(stream=True))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    chunks = open_draft_chunks(sealed, answer.content)
    assert len(chunks) >= 2  # the final chunk ends it, with the receipt as an SSE comment
    wire = receipt_of_event(chunks[-1])
    events = b"".join(chunks[:-1])
    assert events.rstrip().endswith(b"data: [DONE]") and b"chat.completion.chunk" in events
    verify(wire, bound_key=app.receipts.signer.public_key, request=sealed.data,
           response_digest=digest(events))


async def test_a_refusal_after_decapsulation_is_sealed(make_app) -> None:
    async with running(make_app()) as app:
        answer, sealed = await _score(app, _chat(model="no-such-model"))
        garbled, sealed_garbled = await _score(app, b"\x07" + b"\x00" * 20)
    assert answer.status_code == 404  # the convention's status, outside
    assert b"no-such-model" not in answer.content
    [error] = open_draft_chunks(sealed, answer.content)
    assert json.loads(error)["error"]["code"] == "model_not_found"
    assert garbled.status_code == 400
    [error] = open_draft_chunks(sealed_garbled, garbled.content)
    assert json.loads(error)["error"]["code"] == "invalid_request"


async def test_an_unknown_key_and_a_wrong_media_type_are_refused_in_the_clear(
        make_app) -> None:
    async with running(make_app()) as app:
        own_id, _ = rfc.first_key_config(
            bytes.fromhex((await httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                   base_url="http://gw").get("/discover")).text))
        unknown, _ = await _score(app, _chat(), key_id=rfc.random_key_id(own_id))
        wrong, _ = await _score(app, _chat(), content_type="message/ohttp-req")
    assert unknown.status_code == 400 and unknown.json()["type"] == KEY_PROBLEM
    assert wrong.status_code == 415
    assert wrong.json()["error"]["code"] == "unsupported_media_type"
