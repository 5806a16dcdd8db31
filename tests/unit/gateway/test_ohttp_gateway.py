"""The OHTTP gateway resource on the wire: key configurations, outer errors, framing.
What every dialect shares (chat, streams, errors, tampering) is in
`test_dialect_contract.py`."""

from __future__ import annotations

import json
import struct

import httpx
import pytest

from enclave.ohttp import ChunkedRequestSealer, ClientRequest, decode_key_configs
from enclave.ohttp.bhttp import Request, decode_response, encode_request
from enclave.ohttp.protocol import KEY_CONFIG_PROBLEM_TYPE
from testkit.doubles import CHAT_MODEL
from tests.clients import client_for

WELL_KNOWN = "/.well-known/ohttp-gateway"
CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4}


@pytest.fixture
async def raw(gateway_app):
    transport = httpx.ASGITransport(app=gateway_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


@pytest.fixture
async def client(gateway_app):
    c = client_for(gateway_app, "ohttp")
    yield c
    await c.aclose()


async def _config(raw):
    r = await raw.get(WELL_KNOWN)
    return decode_key_configs(r.content)[0]


async def test_key_configs_are_served_as_application_ohttp_keys(raw, gateway_app) -> None:
    r = await raw.get(WELL_KNOWN)
    assert r.headers["content-type"] == "application/ohttp-keys"
    assert r.headers["cache-control"].startswith("max-age=")
    (config,) = decode_key_configs(r.content)
    assert config.public_key == gateway_app.keyring.current().public_key
    assert len(config.suites) == 3


async def test_streamed_chat_arrives_as_sealed_chunks_of_whole_events(client) -> None:
    body = json.dumps({**CHAT, "stream": True}).encode()
    async with client.stream("POST", "/v1/chat/completions", body) as stream:
        assert stream.status == 200
        assert stream.content_type.startswith("text/event-stream")
        chunks = [c async for c in stream.chunks()]
    # Each sealed chunk carries whole SSE events (several when the engine ran ahead).
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)


async def test_inner_errors_travel_encrypted(client, raw) -> None:
    r = await client.request("POST", "/v1/load_lora_adapter", b"{}")
    assert (r.status, json.loads(r.body)["error"]["code"]) == (404, "not_found")


async def test_engine_never_sees_a_refused_inner_route(client, engine) -> None:
    await client.request("POST", "/v1/tokenize", b"{}")
    assert engine.seen_bodies == []


async def _post(raw, data: bytes, media="message/ohttp-req") -> httpx.Response:
    return await raw.post(WELL_KNOWN, content=data, headers={"content-type": media})


async def test_every_decryption_failure_looks_the_same(raw) -> None:
    config = await _config(raw)
    good = ClientRequest(config, encode_request(Request("GET", "/v1/models"))).data
    flipped = bytearray(good)
    flipped[-1] ^= 1
    variants = [good[:7] + b"\x00" * 80, good[:20], good[:-5], bytes(flipped), good[:39]]
    replies = [await _post(raw, v) for v in variants]
    assert {r.status_code for r in replies} == {400}
    assert len({r.content for r in replies}) == 1
    assert replies[0].json()["error"]["code"] == "decryption_failed"


async def test_unknown_key_id_and_unsupported_suite_get_key_config_problem(raw) -> None:
    config = await _config(raw)
    good = ClientRequest(config, encode_request(Request("GET", "/v1/models"))).data
    wrong_key = bytes([good[0] ^ 0x80]) + good[1:]
    wrong_suite = good[:5] + struct.pack("!H", 0x0009) + good[7:]
    for data in (wrong_key, wrong_suite):
        r = await _post(raw, data)
        assert r.status_code == 400  # RFC 9458 section 5.3
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == KEY_CONFIG_PROBLEM_TYPE
        assert r.json()["error"]["code"] == "unknown_key"


async def test_wrong_media_type_and_oversized_body(raw) -> None:
    r = await raw.post(WELL_KNOWN, content=b"x", headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_media_type")
    r = await _post(raw, b"\x00" * (65 * 1024))
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")


async def test_chunked_request_without_final_chunk_is_rejected(raw) -> None:
    config = await _config(raw)
    sealer = ChunkedRequestSealer(config)
    inner = encode_request(Request("GET", "/v1/models"), indeterminate=True)
    r = await _post(raw, sealer.header + sealer.seal_chunk(inner), "message/ohttp-chunked-req")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "decryption_failed")


async def test_gateway_keeps_serving_after_bad_input(raw, client) -> None:
    for junk in (b"", b"\xff" * 7, b"\x00" * 500):
        assert (await _post(raw, junk)).status_code in (400, 422)
    assert (await client.request("GET", "/v1/models")).status == 200


async def test_single_shot_response_to_a_stream_request_is_gathered(raw) -> None:
    config = await _config(raw)
    body = json.dumps({**CHAT, "stream": True}).encode()
    sealed = ClientRequest(config, encode_request(Request("POST", "/v1/chat/completions",
                                                          content=body)))
    r = await _post(raw, sealed.data)
    inner = decode_response(sealed.open_response(r.content))
    assert inner.status == 200
    assert inner.content.endswith(b"data: [DONE]\n\n")


async def test_an_engine_not_ready_is_answered_inside_the_encryption(make_app) -> None:
    app = make_app()  # its lifespan never runs: no engine
    c = client_for(app, "ohttp")
    r = await c.request("GET", "/v1/models")
    await c.aclose()
    assert (r.status, json.loads(r.body)["error"]["code"]) == (503, "engine_not_ready")
