"""Attestation that stays available and fresh: fresh-nonce reports are limited per client
address, one slow quote holds up no other report, the cached report answers challenges
with the attested key, and a proxy re-attests before its keys expire without failing
anyone's request."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import threading

import httpx
import pytest

from attestation.challenge import ChallengeAnswer
from attestation.errors import Reason, VerificationError
from attestation.simulated import SimulatedPki
from attestation.types import CpuEvidence, CpuProvider, ProviderError
from attestation.verify import TrustRoots, verify_challenge_answer, verify_evidence
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.app import create_proxy_app
from proxy.attestor import Attestor
from proxy.dialects import make_client
from testkit.attested import policy, simulated, trusting
from testkit.doubles import CHAT_MODEL
from tests.clients import client_for
from tests.unit.conftest import running

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


def _roots(pki) -> TrustRoots:
    return TrustRoots().with_simulated(pki.roots_pem())


def _client(app, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 5000)),
                             base_url="http://gw")


async def _fresh(client: httpx.AsyncClient, nonce: bytes) -> httpx.Response:
    return await client.get("/v1/attestation/report", params={"nonce": nonce.hex()})


@pytest.fixture
async def attested_app(engine, pki):
    app = create_app(ServeConfig.of(), engine.running, attestation=simulated(pki))
    async with running(app):
        yield app


async def test_a_burst_from_one_address_leaves_another_unaffected(attested_app, pki) -> None:
    async with _client(attested_app, "203.0.113.7") as noisy:
        answers = [await _fresh(noisy, bytes([i]) * 32) for i in range(20)]
    codes = [r.status_code for r in answers]
    assert codes.count(429) >= 15, codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 429)
    nonce = b"q" * 32
    async with _client(attested_app, "198.51.100.9") as quiet:
        r = await _fresh(quiet, nonce)
    assert r.status_code == 200
    claims = verify_evidence(r.content, expected_nonce=nonce, roots=_roots(pki),
                             policy=policy(), now=dt.datetime.now(dt.UTC))
    assert claims.platform == "simulated-sev-snp"


class SlowFirstQuote:
    """Holds its first quote until released, as a stuck quoting enclave would."""

    def __init__(self, inner: CpuProvider) -> None:
        self.platform = inner.platform
        self._inner = inner
        self.entered, self.release = threading.Event(), threading.Event()
        self._first = True
        self._lock = threading.Lock()

    def get_report(self, report_data: bytes) -> CpuEvidence:
        with self._lock:
            first, self._first = self._first, False
        if first:
            self.entered.set()
            self.release.wait()
        return self._inner.get_report(report_data)


async def test_one_slow_quote_never_blocks_other_report_requests(engine, pki) -> None:
    attested = simulated(pki)
    slow = SlowFirstQuote(attested.cpu)
    app = create_app(ServeConfig.of(), engine.running,
                     attestation=dataclasses.replace(attested, cpu=slow))
    async with (running(app), _client(app, "192.0.2.1") as first,
                _client(app, "192.0.2.2") as second):
        stuck = asyncio.create_task(_fresh(first, b"a" * 32))
        assert await asyncio.to_thread(slow.entered.wait, 30)
        answered = await asyncio.wait_for(_fresh(second, b"b" * 32), 30)
        cached = await asyncio.wait_for(second.get("/v1/attestation/report"), 30)
        assert not stuck.done()
        slow.release.set()
        assert (await stuck).status_code == 200
    assert answered.status_code == 200 and cached.status_code == 200


async def test_a_challenge_is_answered_with_the_cached_report_and_the_attested_key(
        attested_app, pki) -> None:
    challenge = b"c" * 32
    async with _client(attested_app, "192.0.2.10") as client:
        answers = [await client.get("/v1/attestation/report",
                                    params={"challenge": challenge.hex()}) for _ in range(20)]
        cached = (await client.get("/v1/attestation/report")).content
    assert {r.status_code for r in answers} == {200}  # cheap: never rate-limited
    body = answers[0].content
    assert ChallengeAnswer.parse(body).document == cached
    now = dt.datetime.now(dt.UTC)
    claims = verify_challenge_answer(body, challenge=challenge, roots=_roots(pki),
                                     policy=policy(), now=now)
    assert "attestation-ed25519" in claims.keys
    with pytest.raises(VerificationError) as err:  # an answer to someone else's challenge
        verify_challenge_answer(body, challenge=b"d" * 32, roots=_roots(pki), policy=policy(),
                                now=now)
    assert err.value.reason is Reason.NONCE_MISMATCH
    forged = json.loads(body)
    forged["signature"] = json.loads(answers[1].content)["signature"][:-4] + "AAA="
    with pytest.raises(VerificationError) as err:
        verify_challenge_answer(json.dumps(forged).encode(), challenge=challenge,
                                roots=_roots(pki), policy=policy(), now=now)
    assert err.value.reason is Reason.NONCE_SIGNATURE
    with pytest.raises(VerificationError) as err:  # replayed ten minutes later
        verify_challenge_answer(body, challenge=challenge, roots=_roots(pki), policy=policy(),
                                now=now + dt.timedelta(minutes=10))
    assert err.value.reason is Reason.EXPIRED


class Clock:
    """One wall clock for the gateway and the proxy, moved by the test."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).timestamp()

    def seconds(self) -> float:
        return self.now

    def utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now, dt.UTC)


@pytest.mark.parametrize("mode", ["nonce", "challenge"])
async def test_a_proxy_running_past_key_expiry_reattests_and_keeps_serving(engine, pki,
                                                                           mode) -> None:
    clock = Clock()
    # The client dates its requests by the real clock; this test moves the gateway's.
    settings = ServeConfig.of(key_rotation_seconds=3600, key_grace_seconds=600,
                        replay_window_seconds=2 * 86400)
    app = create_app(settings, engine.running, attestation=simulated(pki), clock=clock.seconds)
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        attestor = Attestor("http://gw", trust=trusting(pki), transport=transport,
                            report_mode=mode, clock=clock.utc)
        proxy = create_proxy_app(make_client("http://gw", "ohttp", transport=transport,
                                             attestation=attestor))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy),
                                     base_url="http://127.0.0.1:8080") as local:
            assert (await local.post("/v1/chat/completions", json=CHAT)).status_code == 200
            first = attestor.last
            assert first is not None and not attestor.due()
            async with local.stream("POST", "/v1/chat/completions",
                                    json={**CHAT, "stream": True}) as in_flight:
                assert in_flight.status_code == 200
                clock.now = first.expires_at + 60  # past the keys' expiry
                assert attestor.due()
                r = await local.post("/v1/chat/completions", json=CHAT)
                rest = b"".join([chunk async for chunk in in_flight.aiter_bytes()])
            assert r.status_code == 200
            assert b"[DONE]" in rest  # the request under way finished on its old keys
            second = attestor.last
            assert second is not first and second.expires_at > clock.now
            assert second.keys["ohttp"] != first.keys["ohttp"]
        await attestor.aclose()


async def test_a_proxy_reattests_on_its_period(engine, pki) -> None:
    clock = Clock()
    app = create_app(ServeConfig.of(), engine.running, attestation=simulated(pki),
                     clock=clock.seconds)
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        attestor = Attestor("http://gw", trust=trusting(pki), transport=transport,
                            reattest_seconds=600, clock=clock.utc)
        client = make_client("http://gw", "ohttp", transport=transport, attestation=attestor)
        await client.dialect()
        first = attestor.last
        clock.now += 601
        assert attestor.due()
        await client.dialect()
        assert attestor.last is not first
        await client.aclose()


class FailingQuote:
    """A CPU evidence provider whose hardware stops answering (the TSM report interface
    errors, the quote service is down) once `failing` is set."""

    def __init__(self, inner: CpuProvider) -> None:
        self._inner = inner
        self.platform = inner.platform
        self.failing = False

    def get_report(self, report_data: bytes) -> CpuEvidence:
        if self.failing:
            raise ProviderError("configfs-tsm refused the report: Input/output error "
                                "at 0xdeadbeef")
        return self._inner.get_report(report_data)


async def test_an_attestation_provider_failing_mid_run(engine, pki) -> None:
    """Reports answer `503 attestation_unavailable` (no provider detail), inference goes
    on, and reports come back when the provider does."""
    attested = simulated(pki)
    failing = FailingQuote(attested.cpu)
    app = create_app(ServeConfig.of(), engine.running,
                     attestation=dataclasses.replace(attested, cpu=failing))
    async with running(app), _client(app, "192.0.2.9") as client:
        assert (await _fresh(client, b"c" * 32)).status_code == 200
        failing.failing = True
        down = await _fresh(client, b"d" * 32)
        served = client_for(app, "ohttp")
        answer = await served.request("POST", "/v1/chat/completions",
                                      json.dumps(CHAT).encode())
        await served.aclose()
        failing.failing = False
        back = await _fresh(client, b"e" * 32)
    assert (down.status_code, down.json()["error"]["code"]) == (503, "attestation_unavailable")
    assert "deadbeef" not in down.text and "tsm" not in down.text
    assert answer.status == 200
    assert back.status_code == 200
