"""The report endpoint with simulated evidence, and the proxy that verifies before it sends."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

from attestation.simulated import SimulatedPki
from attestation.verify import TrustRoots, verify_evidence
from enclave.ohttp import decode_key_configs
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.app import create_proxy_app
from proxy.attestor import Attestor
from proxy.dialects import make_client
from proxy.trust import Trust
from testkit.attested import policy, simulated, trusting
from testkit.doubles import CHAT_MODEL
from tests.clients import PROTOCOLS
from tests.unit.conftest import start

NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def attested_app(engine, pki):
    app = create_app(ServeConfig.of(), engine.running,
                     attestation=simulated(pki))
    async with app.router.lifespan_context(app):
        await start(app)
        yield app


@pytest.fixture
async def raw(attested_app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=attested_app),
                                 base_url="http://gw") as c:
        yield c


def _roots(pki) -> TrustRoots:
    return TrustRoots().with_simulated(pki.roots_pem())


def _trust(pki, roots=None) -> Trust:
    trust = trusting(pki)
    return trust if roots is None else Trust(roots, policy=trust.policy)


async def test_fresh_report_binds_the_served_key_config(raw, pki) -> None:
    r = await raw.get("/v1/attestation/report", params={"nonce": NONCE.hex()})
    assert r.status_code == 200
    claims = verify_evidence(r.content, expected_nonce=NONCE, roots=_roots(pki),
                             policy=policy(), now=dt.datetime.now(dt.UTC))
    served = decode_key_configs((await raw.get("/.well-known/ohttp-gateway")).content)
    assert decode_key_configs(claims.keys["ohttp"]) == served
    assert len(claims.gpus) == 1


async def test_the_report_binds_every_dialects_published_keys(raw, attested_app, pki) -> None:
    r = await raw.get("/v1/attestation/report", params={"nonce": NONCE.hex()})
    claims = verify_evidence(r.content, expected_nonce=NONCE, roots=_roots(pki),
                             policy=policy(), now=dt.datetime.now(dt.UTC))
    published = attested_app.dialects.published_keys()
    assert {k: v for k, v in claims.keys.items() if k in published} == published
    assert set(claims.keys) == {"ohttp", "ehbp", "continuum", "continuum-mlkem768x25519",
                                "atoma-node-x25519", "atoma-signing-ed25519",
                                "attestation-ed25519", "receipt-ed25519", "log-ed25519"}


async def test_report_without_nonce_is_cached_per_key_epoch(raw, attested_app) -> None:
    first = (await raw.get("/v1/attestation/report")).content
    assert (await raw.get("/v1/attestation/report")).content == first
    attested_app.keyring.rotate()
    assert (await raw.get("/v1/attestation/report")).content != first


@pytest.mark.parametrize("nonce", ["abc", "zz" * 32, "00" * 31])
async def test_bad_nonce_is_a_clear_400(raw, nonce) -> None:
    r = await raw.get("/v1/attestation/report", params={"nonce": nonce})
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) == (
        400, "invalid_request", "nonce")


async def test_fresh_reports_are_rate_limited_with_retry_after(raw) -> None:
    codes = [(await raw.get("/v1/attestation/report", params={"nonce": NONCE.hex()}))
             for _ in range(8)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert int(limited[0].headers["retry-after"]) >= 1


async def test_gateway_without_attestation_says_so(gateway_app) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as c:
        r = await c.get("/v1/attestation/report")
    assert (r.status_code, r.json()["error"]["code"]) == (503, "attestation_unavailable")


def _proxy(app, trust, protocol="ohttp"):
    transport = httpx.ASGITransport(app=app)
    verifier = Attestor("http://gw", trust=trust, transport=transport)
    proxy = create_proxy_app(make_client("http://gw", protocol, transport=transport,
                                         attestation=verifier))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://127.0.0.1:8080")


CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_proxy_verifies_then_forwards(attested_app, pki, engine, protocol) -> None:
    async with _proxy(attested_app, _trust(pki), protocol) as local:
        r = await local.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert engine.seen_bodies


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_proxy_refuses_an_unverified_gateway_and_sends_nothing(attested_app, engine, pki,
                                                                     protocol) -> None:
    async with _proxy(attested_app, _trust(pki, TrustRoots()), protocol) as local:
        r = await local.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "gateway_not_attested"
    assert "untrusted_root" in r.json()["error"]["message"]
    assert engine.seen_bodies == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_proxy_reattests_after_key_rotation(attested_app, pki, engine, protocol) -> None:
    async with _proxy(attested_app, _trust(pki), protocol) as local:
        assert (await local.post("/v1/chat/completions", json=CHAT)).status_code == 200
        keyring = attested_app.keyring
        keyring._grace = 0.0
        keyring.rotate()
        r = await local.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["choices"]
