"""One registry names the dialects (`enclave.registry`): a fifth dialect, written here in
the test suite and added to the registry the gateway is given, gets its engine route and
its control route mounted, its key published (so the report binds it) and its name in
the metrics, with no other edit. Its wire format is a toy (XOR with a published key);
what is under test is that nothing in the gateway lists dialects by hand."""

from __future__ import annotations

import json

import httpx

from enclave.dialect import (
    ControlRoute,
    EngineRoute,
    InnerRequest,
    OuterRequest,
    OuterResponse,
    StreamStart,
    json_response,
    plain_refusal,
)
from enclave.engine import CHAT
from enclave.plugin import DialectSetup
from enclave.registry import DIALECTS, Dialect
from gateway.app import create_app
from gateway.config import ServeConfig
from tests.asgi import scrape
from tests.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.unit.conftest import running

KEY = b"\x5a"
PATH = "/v1/xor/chat/completions"


def _xor(data: bytes) -> bytes:
    return bytes(b ^ KEY[0] for b in data)


class XorResponder:
    streams = False

    def whole(self, status: int, content_type: str, body: bytes) -> OuterResponse:
        return OuterResponse(status, (("content-type", "application/x-xor"),), _xor(body))

    def error(self, status: int, error: bytes) -> OuterResponse:
        return self.whole(status, "application/json", error)

    def start(self, status: int, content_type: str) -> StreamStart:
        raise AssertionError("gathered whole: streams is False")

    def chunk(self, events: bytes) -> bytes:
        raise AssertionError("gathered whole")

    def end(self) -> bytes:
        raise AssertionError("gathered whole")


class XorServer:
    name = "xor-test"
    end_authenticated = False

    def accepts(self, request: OuterRequest) -> bool:
        return True

    def open(self, request: OuterRequest) -> tuple[InnerRequest, XorResponder]:
        return InnerRequest(*CHAT, _xor(request.body), replay_id=request.body[:16]), \
            XorResponder()

    def refuse(self, error: Exception) -> OuterResponse:
        return plain_refusal(error)

    def published_keys(self) -> dict[str, bytes]:
        return {"xor-test": KEY}

    def engine_routes(self) -> tuple[EngineRoute, ...]:
        return (EngineRoute("POST", PATH),)

    def control_routes(self) -> tuple[ControlRoute, ...]:
        return (ControlRoute("GET", "/v1/xor/key", lambda call: json_response(
            200, json.dumps({"key": KEY.hex()}).encode())),)


def _xor_server(setup: DialectSetup) -> XorServer:
    return XorServer()


async def test_a_fifth_dialect_is_mounted_published_and_counted_from_the_registry() -> None:
    registry = (*DIALECTS[:-1], Dialect("xor-test", _xor_server), DIALECTS[-1])
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running, registry=registry)
    async with running(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                               base_url="http://gw") as http:
        key = await http.get("/v1/xor/key")
        chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi there"}],
                "max_tokens": 3}
        answered = await http.post(PATH, content=_xor(json.dumps(chat).encode()))
        metrics = await scrape(app)
    assert key.json() == {"key": "5a"}
    assert answered.status_code == 200
    reply = json.loads(_xor(answered.content))
    assert reply["choices"][0]["message"]["content"].startswith("echo: hi")
    assert app.state.dialects.published_keys()["xor-test"] == KEY
    assert 'dialect="xor-test"' in metrics
    # and the four the registry already lists are still all there
    assert [d.name for d in app.state.dialects.all()] == [
        "ohttp", "ehbp", "atoma", "continuum", "xor-test", "plaintext"]
