"""RFC 9458 and draft-ietf-ohai-chunked-ohttp as a client written from the RFCs sees the
gateway (`tests/rfc9458_client.py`: `cryptography` primitives only, no Cloister code):
every MUST, and the SHOULDs Cloister meets. Each test sends what the RFC names and checks
the answer in the form the RFC gives."""

from __future__ import annotations

import email.utils
import json

import httpx
import pytest

from testkit.doubles import CHAT_MODEL
from tests import rfc9458_client as rfc
from tests.unit.conftest import running

GATEWAY = "/.well-known/ohttp-gateway"
CHAT = json.dumps({"model": CHAT_MODEL, "max_tokens": 2,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
DATE_PROBLEM = "https://iana.org/assignments/http-problem-types#date"
KEY_PROBLEM = "https://iana.org/assignments/http-problem-types#ohttp-key"


async def _exchange(app, message: bytes, *, key_id: int | None = None
                    ) -> tuple[httpx.Response, rfc.Encapsulated]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as http:
        own_id, public = rfc.first_key_config((await http.get(GATEWAY)).content)
        sealed = rfc.Encapsulated(own_id if key_id is None else key_id, public, message)
        answer = await http.post(GATEWAY, content=sealed.data,
                                 headers={"content-type": "message/ohttp-req"})
    return answer, sealed


def _inner(answer: httpx.Response, sealed: rfc.Encapsulated) -> rfc.BinaryResponse:
    assert (answer.status_code, answer.headers["content-type"]) == (200, "message/ohttp-res")
    return rfc.parse_bhttp_response(sealed.open_response(answer.content))


def _request(*headers: tuple[str, str], content: bytes = CHAT) -> bytes:
    return rfc.bhttp_request("POST", "/v1/chat/completions",
                             [("content-type", "application/json"), *headers], content)


async def test_a_client_written_from_the_rfcs_is_served(make_app, engine) -> None:
    async with running(make_app()) as app:
        answer, sealed = await _exchange(app, _request(
            ("date", email.utils.formatdate(usegmt=True))))
    inner = _inner(answer, sealed)
    assert inner.status == 200
    assert json.loads(inner.content)["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("message", [
    b"\x00\x04POST",                 # cut short after the method
    b"\x07" + b"\x00" * 20,         # no such framing indicator
    _request()[:-3],                # content shorter than its length says
])
async def test_a_malformed_binary_http_message_is_answered_inside_the_encapsulation(
        make_app, engine, message) -> None:
    """Section 5.2: errors found after decapsulation MUST be sent in an Encapsulated
    Response (they were an unencrypted 400 `decryption_failed`)."""
    async with running(make_app()) as app:
        answer, sealed = await _exchange(app, message)
    inner = _inner(answer, sealed)
    assert inner.status == 400
    assert json.loads(inner.content)["error"]["code"] == "invalid_request"
    assert engine.seen_bodies == []


@pytest.mark.parametrize("date", ["not a date", "Mon, 01 Jan 2001 00:00:00 GMT"])
async def test_a_bad_or_stale_date_gets_the_date_problem_and_the_gateway_s_date(
        make_app, engine, date) -> None:
    """Section 6.5.2: a request whose Date is outside the window is refused with the
    `date` problem type and a Date of the gateway's own, inside the encapsulation, so
    that the client can correct its clock and retry (an unparsable Date was an unsealed
    400)."""
    async with running(make_app()) as app:
        answer, sealed = await _exchange(app, _request(("date", date)))
        inner = _inner(answer, sealed)
        assert inner.status == 400
        assert inner.headers["content-type"] == "application/problem+json"
        assert json.loads(inner.content)["type"] == DATE_PROBLEM
        theirs = email.utils.parsedate_to_datetime(inner.headers["date"]).timestamp()
        retried, sealed = await _exchange(app, _request(
            ("date", email.utils.formatdate(theirs, usegmt=True))))
    assert _inner(retried, sealed).status == 200
    assert len(engine.seen_bodies) == 1


async def test_an_inner_request_expecting_100_continue_gets_an_error(make_app, engine) -> None:
    """Section 5.1 (by RFC 9110 section 10.1.1 semantics): an Oblivious Gateway cannot
    send an informational response inside one Encapsulated Response; a request carrying
    `Expect: 100-continue` MUST get an error (it was served)."""
    async with running(make_app()) as app:
        answer, sealed = await _exchange(app, _request(("expect", "100-continue")))
    inner = _inner(answer, sealed)
    assert inner.status == 417
    assert json.loads(inner.content)["error"]["code"] == "expectation_failed"
    assert engine.seen_bodies == []


async def test_an_unknown_key_id_gets_the_registered_problem_type(make_app, engine) -> None:
    """Section 5.3: a key configuration the gateway does not have is answered with the
    `ohttp-key` problem type (it was a type of our own), unencrypted."""
    async with running(make_app()) as app:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as http:
            own, _ = rfc.first_key_config((await http.get(GATEWAY)).content)
        answer, _ = await _exchange(app, _request(), key_id=rfc.random_key_id(own))
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == KEY_PROBLEM


async def test_chunked_responses_say_they_are_incremental(make_app) -> None:
    """draft-ietf-ohai-chunked-ohttp section 3: chunked messages carry `Incremental: ?1`
    so that intermediaries forward each chunk as it comes."""
    from tests.clients import client_for
    from tests.unit.gateway.test_side_channels import Wiretap

    async with running(make_app()) as app:
        tap = Wiretap(app)
        client = client_for(app, "ohttp", transport=tap)
        async with client.stream("POST", "/v1/chat/completions", json.dumps(
                {"model": CHAT_MODEL, "max_tokens": 3, "stream": True,
                 "messages": [{"role": "user", "content": "hi"}]}).encode()) as stream:
            [chunk async for chunk in stream.chunks()]
        await client.aclose()
    sent = tap.requests[-1]
    assert sent.headers["content-type"] == "message/ohttp-chunked-req"
    assert sent.headers["incremental"] == "?1"
    assert tap.answer_headers[-1]["incremental"] == "?1"


@pytest.mark.parametrize("padding", ["pow2:256", "fixed:65536", "off"])
def test_no_chunk_carries_more_than_16384_bytes_of_plaintext(padding) -> None:
    """draft-ietf-ohai-chunked-ohttp section 3: senders keep chunks to 16,384 bytes. A
    16 KiB padded chunk and its framing made 16,390; content beyond it now goes sealed in
    pieces, and padding leaves room for the framing."""
    from enclave.dialect import InnerRequest
    from enclave.keys import KeyRing
    from enclave.ohttp.dialect import OhttpClient, OhttpServer
    from enclave.ohttp.varint import decode_varint
    from enclave.padding import PaddingPolicy, padded

    keyring = KeyRing()
    outer, _ = OhttpClient(keyring.key_configs()[0]).seal(
        InnerRequest("POST", "/v1/chat/completions", CHAT), stream=True)
    _, responder = OhttpServer(keyring).open(outer)
    responder = padded(responder, PaddingPolicy.parse(padding))
    responder.start(200, "text/event-stream")
    for size in (100, 8_200, 16_380, 40_000):
        events = b"data: " + b"x" * size + b"\n\n"
        sealed, at, pieces = responder.chunk(events), 0, []
        while at < len(sealed):
            decoded = decode_varint(sealed, at)
            assert decoded is not None
            length, at = decoded
            pieces.append(length - 16)  # less the AEAD tag: the chunk's plaintext
            at += length
        assert max(pieces) <= 16_384, (size, pieces)


@pytest.mark.parametrize("protocol", ["ohttp", "ehbp", "atoma", "continuum"])
async def test_model_latest_sealed_in_any_dialect_is_resolved_by_the_gateway(
        make_app, engine, protocol) -> None:
    """`latest` was resolved by our proxy only: sealed as it is, it was a 404. The
    gateway now takes it as its generation model for chat and completions and its
    embedding model for embeddings."""
    from testkit.doubles import EMBEDDING_MODEL
    from tests.clients import client_for

    async with running(make_app()) as app:
        client = client_for(app, protocol)
        try:
            chat = await client.request("POST", "/v1/chat/completions", json.dumps(
                {"model": "latest", "max_tokens": 2,
                 "messages": [{"role": "user", "content": "hi"}]}).encode())
            embedded = await client.request("POST", "/v1/embeddings", json.dumps(
                {"model": "latest", "input": "x"}).encode())
        finally:
            await client.aclose()
    assert (chat.status, embedded.status) == (200, 200)
    assert [body["model"] for body in engine.seen_bodies] == [CHAT_MODEL, EMBEDDING_MODEL]



@pytest.mark.parametrize("content_type", ["application/xml", "message/ohttp-req",
                                          "text/plain"])
async def test_an_engine_route_says_which_media_types_it_takes(make_app, content_type) -> None:
    """A body no dialect claims (a content type other than JSON, or an OHTTP message
    posted to an OpenAI path) gets `415` naming what the route takes, in its message and
    in `Accept-Post`, instead of a plaintext refusal that names none."""
    async with running(make_app()) as app, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        answer = await http.post("/v1/chat/completions", content=b"\x00\x01",
                                 headers={"content-type": content_type})
    assert (answer.status_code, answer.json()["error"]["code"]) == (415,
                                                                    "unsupported_media_type")
    assert "application/json" in answer.headers["accept-post"]
    assert "/.well-known/ohttp-gateway" in answer.json()["error"]["message"]
