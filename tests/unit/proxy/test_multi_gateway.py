"""The proxy over several gateways: spread, failover, and per-gateway verification."""

from __future__ import annotations

import contextlib
import json

import httpx
import pytest

from attestation.simulated import SimulatedPki
from attestation.verify import TrustRoots
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.app import create_proxy_app
from proxy.attestor import Attestor
from proxy.dialects import make_client
from proxy.multi import MultiGatewayClient
from proxy.trust import Trust
from testkit.attested import simulated, trusting
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.clients import unreachable_client
from tests.unit.conftest import start

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def gateways(pki):
    engines = [DeterministicTestEngine(), DeterministicTestEngine()]
    apps = [create_app(ServeConfig.of(), e.running,
                       attestation=simulated(pki))
            for e in engines]
    async with contextlib.AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
            await start(app)
        yield apps, engines


def _client(app, pki, roots=None):
    transport = httpx.ASGITransport(app=app)
    trust = trusting(pki)
    if roots is not None:
        trust = Trust(roots, policy=trust.policy)
    return make_client("http://gw", "ohttp", transport=transport,
                       attestation=Attestor("http://gw", trust=trust, transport=transport))


async def _post(client, n: int) -> list[int]:
    return [(await client.request("POST", "/v1/chat/completions",
                                  json.dumps(CHAT).encode())).status for _ in range(n)]


async def test_requests_are_spread_over_every_gateway(gateways, pki) -> None:
    (a, b), (ea, eb) = gateways
    multi = MultiGatewayClient([_client(a, pki), _client(b, pki)])
    assert await _post(multi, 6) == [200] * 6
    assert len(ea.seen_bodies) == 3 and len(eb.seen_bodies) == 3
    await multi.aclose()


async def test_failover_when_a_gateway_stops_answering(gateways, pki) -> None:
    (a, b), (ea, eb) = gateways
    multi = MultiGatewayClient([unreachable_client(), _client(b, pki)])
    assert await _post(multi, 4) == [200] * 4
    assert len(eb.seen_bodies) == 4
    await b.engine_slot.stop()  # it now answers 503 engine_not_ready (sealed)
    assert await _post(multi, 1) == [503]  # both down: the last answer is passed on
    await multi.aclose()


async def test_each_gateway_is_verified_on_its_own(gateways, pki) -> None:
    (a, b), (ea, eb) = gateways
    untrusted = _client(a, pki, roots=TrustRoots())  # production roots: a fails to verify
    multi = MultiGatewayClient([untrusted, _client(b, pki)])
    assert await _post(multi, 3) == [200] * 3
    assert ea.seen_bodies == [] and len(eb.seen_bodies) == 3
    await multi.aclose()


async def test_streams_fail_over_before_their_first_byte(gateways, pki) -> None:
    (a, b), _ = gateways
    multi = MultiGatewayClient([unreachable_client(), _client(b, pki)])
    app = create_proxy_app(multi)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://127.0.0.1:8080") as local:
        r = await local.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
