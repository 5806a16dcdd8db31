"""One registry names the dialects (`enclave.registry`): a fifth dialect, written here in
the test suite and added to the registry the gateway and the client are given, gets its
engine route and its control route mounted, its key published and bound in the
attestation report, discovered and checked by the client's one driver, and its name in
the metrics, with no other edit. Its wire format is a toy (XOR with a published key);
what is under test is that nothing lists dialects by hand."""

from __future__ import annotations

import json

import httpx
import pytest

from attestation.simulated import SimulatedPki
from enclave.dialect import (
    ControlRoute,
    EngineRoute,
    Headers,
    InnerHead,
    InnerRequest,
    InnerResponse,
    OuterRequest,
    OuterResponse,
    StreamStart,
    json_response,
    plain_refusal,
)
from enclave.discovery import answered
from enclave.engine import CHAT
from enclave.errors import RequestRefused
from enclave.plugin import ClientSetup, DialectSetup
from enclave.registry import DIALECTS, Dialect
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.attestor import Attestor
from proxy.dialects import make_client
from testkit.attested import simulated, trusting
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.asgi import scrape
from tests.unit.conftest import running

KEY = b"\x5a"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))
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

    def refuse(self, error: RequestRefused) -> OuterResponse:
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


class XorOpener:
    def whole(self, response: OuterResponse) -> InnerResponse:
        return InnerResponse(response.status, "application/json", _xor(response.body))

    def begin(self, status: int, headers: Headers) -> bool:
        return False

    def push(self, data: bytes) -> list[InnerHead | bytes]:
        raise AssertionError("never a stream")

    def finish(self) -> list[InnerHead | bytes]:
        raise AssertionError("never a stream")


class XorClient:
    name = "xor-test"

    def __init__(self, key: bytes) -> None:
        self.key = key

    def seal(self, request: InnerRequest, *, stream: bool) -> tuple[OuterRequest, XorOpener]:
        return OuterRequest("POST", PATH, (), _xor(request.body)), XorOpener()


class XorKeys:
    """Its client side, sans-IO: the key at /v1/xor/key, bound as `xor-test`."""

    name = "xor-test"
    sealed_models = False
    credential = False
    vouched_by: list[bytes | None] = []

    def lookups(self) -> tuple[OuterRequest, ...]:
        return (OuterRequest("GET", "/v1/xor/key"),)

    def candidate(self, index: int, response: OuterResponse) -> XorClient:
        return XorClient(bytes.fromhex(json.loads(answered(response))["key"]))

    def vouched(self, candidate, bound) -> bool:
        self.vouched_by.append(bound.get("xor-test"))
        return candidate.key == bound.get("xor-test")

    def ready(self, candidate) -> XorClient:
        return candidate

    def expired(self, dialect) -> bool:
        return False


def _xor_client(setup: ClientSetup) -> XorKeys:
    return XorKeys()


async def test_a_fifth_dialect_is_mounted_discovered_and_counted_from_the_registry(
        pki) -> None:
    registry = (*DIALECTS[:-1], Dialect("xor-test", _xor_server, _xor_client), DIALECTS[-1])
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running, registry=registry,
                     attestation=simulated(pki))
    chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi there"}],
            "max_tokens": 3}
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        attestor = Attestor("http://gw", trust=trusting(pki), transport=transport)
        client = make_client("http://gw", "xor-test", attestation=attestor,
                             transport=transport, registry=registry)
        answer = await client.request("POST", "/v1/chat/completions",
                                      json.dumps(chat).encode())
        metrics = await scrape(app)
        await client.aclose()
    assert XorKeys.vouched_by == [KEY]  # the report bound the key the client found
    assert answer.status == 200
    reply = json.loads(answer.body)
    assert reply["choices"][0]["message"]["content"].startswith("echo: hi")
    assert app.dialects.published_keys()["xor-test"] == KEY
    assert 'dialect="xor-test"' in metrics
    # and the five the registry already lists are still all there
    assert [d.name for d in app.dialects.all()] == [
        "ohttp", "azure-ohttp", "ehbp", "atoma", "continuum", "xor-test", "plaintext"]
