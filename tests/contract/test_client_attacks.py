"""Attacks on the clients: a man in the middle who answers in the gateway's place, or
damages what it says. A client never passes on a status or body the gateway did not
authenticate, and never ends a stream cleanly unless its end is authenticated."""

from __future__ import annotations

import json

import httpx
import pytest

from proxy.app import create_proxy_app
from testkit.doubles import CHAT_MODEL, InterceptingTransport
from tests.clients import PROTOCOLS, client_for

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "one two three four"}],
        "max_tokens": 6}
FORGED = {"id": "x", "object": "chat.completion", "model": CHAT_MODEL, "created": 0,
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "forged"},
                       "finish_reason": "stop"}]}


def _is_engine_call(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.endswith(
        ("chat/completions", "/completions", "/embeddings", "/.well-known/ohttp-gateway"))


class ForgingTransport(InterceptingTransport):
    """Lets key fetches through to the real gateway, answers every engine call itself."""

    def __init__(self, app, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(app)
        self.forged = (status, body, headers)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not _is_engine_call(request):
            return await super().handle_async_request(request)
        status, body, headers = self.forged
        return httpx.Response(status, headers=headers, content=body)


async def _through_proxy(client, payload: dict) -> httpx.Response:
    app = create_proxy_app(client)
    # A stream the proxy cuts raises inside the app; the local client just sees it end.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as local:
        return await local.post("/v1/chat/completions", json=payload)


@pytest.mark.parametrize("dialect", PROTOCOLS)
@pytest.mark.parametrize("status", [200, 203, 400, 500])
async def test_a_forged_reply_is_never_passed_on(gateway_app, dialect, status) -> None:
    forging = ForgingTransport(gateway_app, status, json.dumps(FORGED).encode(),
                               {"content-type": "application/json"})
    r = await _through_proxy(client_for(gateway_app, dialect, transport=forging), CHAT)
    assert b"forged" not in r.content
    assert (r.status_code, r.json()["error"]["code"]) == (502, "gateway_response_invalid")


@pytest.mark.parametrize("dialect", PROTOCOLS)
async def test_a_forged_stream_is_never_passed_on(gateway_app, dialect) -> None:
    event = json.dumps({"choices": [{"index": 0, "delta": {"content": "forged"}}]})
    body = f"data: {event}\n\ndata: [DONE]\n\n".encode()
    forging = ForgingTransport(gateway_app, 200, body, {"content-type": "text/event-stream"})
    r = await _through_proxy(client_for(gateway_app, dialect, transport=forging),
                             {**CHAT, "stream": True})
    assert b"forged" not in r.content
    assert not r.content.endswith(b"data: [DONE]\n\n")


def _events(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e]


def _join(events: list[bytes]) -> bytes:
    return b"".join(e + b"\n\n" for e in events)


STREAM_DAMAGE = {
    "swap": lambda ev: [ev[0], ev[2], ev[1], *ev[3:]],
    "duplicate": lambda ev: [ev[0], ev[1], ev[1], *ev[2:]],
    "drop": lambda ev: [ev[0], *ev[2:]],
    "early_done": lambda ev: [ev[0], ev[1], b"data: [DONE]"],
    "no_done": lambda ev: ev[:-1],
}


@pytest.mark.parametrize("damage", sorted(STREAM_DAMAGE))
async def test_atoma_stream_order_and_completeness_are_enforced(gateway_app, damage) -> None:
    def mangle(request, response, body: bytes) -> bytes:
        if not _is_engine_call(request):
            return body
        return _join(STREAM_DAMAGE[damage](_events(body)))

    client = client_for(gateway_app, "atoma",
                        transport=InterceptingTransport(gateway_app, damage=mangle))
    r = await _through_proxy(client, {**CHAT, "stream": True})
    assert not r.content.endswith(b"data: [DONE]\n\n")


async def test_an_ehbp_response_stripped_of_every_frame_is_refused(gateway_app) -> None:
    def strip(request, response, body: bytes) -> bytes:
        return b"" if _is_engine_call(request) else body

    client = client_for(gateway_app, "ehbp",
                        transport=InterceptingTransport(gateway_app, damage=strip))
    r = await _through_proxy(client, CHAT)
    assert (r.status_code, r.json()["error"]["code"]) == (502, "gateway_response_invalid")
