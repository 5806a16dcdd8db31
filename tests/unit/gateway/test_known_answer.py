"""The known-answer check (`gateway.known_answer`, issue 31): the gateway is ready only
once its engine gives the answer the workload manifest records for the check's prompt;
an engine that starts answering otherwise (a changed token), answers nothing, or stalls
takes the gateway out of `/ready` within one check period, with the reason in `/health`,
a metric, no attested report, and no answer to any request."""

from __future__ import annotations

import copy
import dataclasses
import json

import httpx
import pytest

from attestation.simulated import SimulatedPki
from gateway.app import create_app
from gateway.config import ServeConfig
from gateway.known_answer import MAX_TOKENS, PROMPT, KnownAnswer, answer_digest
from testkit import doubles
from testkit.attested import TEST_WORKLOAD, simulated
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.unit.conftest import running

NONCE = "ab" * 32
CHAT = json.dumps({"model": CHAT_MODEL, "max_tokens": 3,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


def _recording(digest: str | None) -> dict:
    manifest = copy.deepcopy(TEST_WORKLOAD)
    manifest["engine"]["models"][0]["known_answer"] = digest
    return manifest


KNOWN = answer_digest(" ".join(doubles.reply_words(PROMPT, MAX_TOKENS)))


async def _wait_checked(app, checks: int) -> None:
    """Until the gateway has made `checks` known-answer checks in all."""
    while app.known_answer.checks < checks:
        await app.known_answer.checked.wait()


async def test_an_engine_that_changes_its_answer_takes_the_gateway_out_of_ready(
        pki, monkeypatch) -> None:
    attested = dataclasses.replace(simulated(pki, _recording(KNOWN)), workload=_recording(KNOWN))
    app = create_app(ServeConfig.of(known_answer_seconds=1, insecure_plaintext=True),
                     DeterministicTestEngine().running, attestation=attested)
    async with running(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                               base_url="http://gw") as http:
        assert (await http.get("/ready")).status_code == 200
        assert (await http.get("/v1/attestation/report", params={"nonce": NONCE})
                ).status_code == 200
        assert app.known_answer.answers[CHAT_MODEL] == KNOWN
        # the engine now answers one token differently
        original = doubles.reply_words
        monkeypatch.setattr(doubles, "reply_words", lambda prompt, n: [
            "garbage", *original(prompt, n)[1:]])
        await _wait_checked(app, 2)  # the next check, one period later
        ready = await http.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "known_answer_failed"
        assert "not the recorded one" in ready.json()["error"]["message"]
        health = await http.get("/health")
        assert health.status_code == 503 and health.json()["error"]["code"] == \
            "known_answer_failed"
        report = await http.get("/v1/attestation/report", params={"nonce": NONCE})
        assert report.status_code == 503  # no client, no keyholder gets its keys vouched
        bundle = await http.get("/v1/attestation/bundle", params={"nonce": NONCE})
        assert bundle.status_code == 503
        answer = await http.post("/v1/chat/completions", content=CHAT,
                                 headers={"content-type": "application/json"})
        assert answer.status_code == 503 and answer.json()["error"]["code"] == \
            "known_answer_failed"  # nothing from the broken engine
        assert app.metrics.known_answer_checks.labels("mismatch")._value.get() >= 1
        # the engine answers right again: the next check gives the gateway back
        monkeypatch.setattr(doubles, "reply_words", original)
        await _wait_checked(app, 3)
        assert (await http.get("/ready")).status_code == 200


async def test_without_a_recorded_digest_the_answer_is_still_checked_and_logged(
        make_app) -> None:
    async with running(make_app()) as app:
        assert app.known_answer.ok
        assert app.known_answer.answers == {CHAT_MODEL: KNOWN}  # to record it


class _Broken(DeterministicTestEngine):
    def __init__(self, answer: bytes | None, **options) -> None:
        super().__init__(**options)
        self._answer = answer

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if self._answer is None or scope["path"] != "/v1/completions":
            return await super().__call__(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": self._answer})


@pytest.mark.parametrize(("engine", "reason"), [
    (_Broken(b'{"choices": [{"text": ""}], "usage": {"completion_tokens": 0}}'), "empty"),
    (_Broken(b'{"choices": [{"text": "a b"}], "usage": {"completion_tokens": 99}}'),
     "longer than asked"),
    (_Broken(b"not json"), "not a completion"),
    (_Broken(None, token_delay=1.0), "did not answer within"),
], ids=["empty", "too-many-tokens", "not-an-answer", "stalled"])
async def test_an_engine_that_gives_no_answer_fails_the_check(engine, reason) -> None:
    known = KnownAnswer({CHAT_MODEL: KNOWN}, period=600, timeout=0.2)
    withheld: list[str | None] = []
    known._withhold = withheld.append
    async with engine.running():
        assert not await known.check(engine)
    assert reason in (known.reason or "") and withheld == [known.reason]
