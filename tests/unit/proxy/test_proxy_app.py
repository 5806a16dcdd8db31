"""`cloister proxy`'s app: plaintext OpenAI on localhost, OHTTP to an in-process gateway."""

from __future__ import annotations

import httpx
import pytest

from proxy.app import create_proxy_app
from proxy.errors import GatewayResponseInvalid
from testkit.doubles import CHAT_MODEL, EMBEDDING_MODEL, Damage, InterceptingTransport
from tests.clients import client_for, unreachable_client

JSON = {"content-type": "application/json"}
CHAT = {"model": "latest", "messages": [{"role": "user", "content": "hi you"}],
        "max_tokens": 3}


def tampering(*, truncate: bool) -> Damage:
    """Flip one byte of, or cut, every gateway response body to a POST."""
    def damage(request: httpx.Request, response: httpx.Response, body: bytes) -> bytes:
        if request.method != "POST":
            return body
        if truncate:
            return body[:-20]
        flipped = bytearray(body)
        flipped[len(flipped) // 2] ^= 0x01
        return bytes(flipped)
    return damage


async def _proxy(gateway_app, transport=None):
    upstream = transport or httpx.ASGITransport(app=gateway_app)
    app = create_proxy_app(client_for(gateway_app, transport=upstream))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080")


async def test_chat_with_model_latest(gateway_app, engine) -> None:
    async with await _proxy(gateway_app) as local:
        r = await local.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "echo: hi you"
    assert engine.seen_bodies[-1]["model"] == CHAT_MODEL


async def test_streamed_chat_is_relayed_as_sse(gateway_app) -> None:
    async with await _proxy(gateway_app) as local:
        r = await local.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")


async def test_embeddings_latest_resolves_to_the_embedding_model(gateway_app, engine) -> None:
    async with await _proxy(gateway_app) as local:
        r = await local.post("/v1/embeddings", json={"model": "latest", "input": "x"})
    assert r.status_code == 200
    assert engine.seen_bodies[-1]["model"] == EMBEDDING_MODEL


async def test_models_and_gateway_errors_pass_through(gateway_app) -> None:
    async with await _proxy(gateway_app) as local:
        assert (await local.get("/v1/models")).json()["data"][0]["id"] == CHAT_MODEL
        r = await local.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
        r = await local.post("/v1/chat/completions", content=b"[1]", headers=JSON)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")


@pytest.mark.parametrize("truncate", [False, True])
async def test_tampered_or_truncated_response_is_refused(gateway_app, truncate) -> None:
    tamper = InterceptingTransport(gateway_app, damage=tampering(truncate=truncate))
    async with await _proxy(gateway_app, tamper) as local:
        r = await local.post("/v1/chat/completions", json={**CHAT, "model": CHAT_MODEL})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "gateway_response_invalid"


@pytest.mark.parametrize("truncate", [False, True])
async def test_tampered_or_truncated_stream_never_ends_cleanly(gateway_app, truncate) -> None:
    tamper = InterceptingTransport(gateway_app, damage=tampering(truncate=truncate))
    async with await _proxy(gateway_app, tamper) as local:
        try:
            r = await local.post("/v1/chat/completions",
                                 json={**CHAT, "model": CHAT_MODEL, "stream": True})
        except GatewayResponseInvalid:
            return  # raised mid-stream: the local connection is cut, no [DONE]
    # Damage found before the first byte went out: a clear error instead.
    assert (r.status_code, r.json()["error"]["code"]) == (502, "gateway_response_invalid")


async def test_unreachable_gateway_is_a_clear_502() -> None:
    app = create_proxy_app(unreachable_client())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://127.0.0.1:8080") as local:
        r = await local.post("/v1/chat/completions", json=CHAT)
    assert (r.status_code, r.json()["error"]["code"]) == (502, "gateway_unreachable")


async def test_local_bad_json_is_refused_before_anything_is_sent(gateway_app, engine) -> None:
    async with await _proxy(gateway_app) as local:
        r = await local.post("/v1/chat/completions", content=b"{nope", headers=JSON)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    assert engine.seen_bodies == []
