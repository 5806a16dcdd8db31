"""The known-answer check: before `/ready`, and then every `--known-answer-seconds`, the
gateway asks its engine a fixed prompt with greedy decoding and non-default sampling
parameters (a repetition penalty, top-k and top-p, a seed: the paths GPU
confidential-computing mode has been seen to break into garbage, vLLM #57224) and
compares a digest of the answer with the one the workload manifest records for that model
on that engine kind (`engine.models[].known_answer`, from `gateway/data/known-answers.json`
or `--known-answer`). A gateway that would answer 200 with garbage refuses instead.

On a mismatch, an answer that is not one (no text, an error, tokens past `max_tokens`), or
an engine that does not answer within the timeout, the check fails: `/ready` and `/health`
answer 503 with the reason, the report and the bundle are refused (no client and no
keyholder gets this gateway's keys vouched for), `cloister_known_answer_checks_total`
counts it and the log says it. Where the manifest records no digest (a model nobody
measured) the answer is still checked for being one, and the digest is logged, so an
operator can record it (`scripts/known-answer.py` does for the demo model).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from enclave.engine import Engine, EngineRequest, call_engine

PROMPT = "The known-answer check of a confidential gateway counts: one, two, three,"
MAX_TOKENS = 12
# Greedy (temperature 0) so the answer is fixed; the other parameters are not their
# defaults, so the sampler's penalty and filtering paths run on buffers already made.
SAMPLING = {"temperature": 0.0, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1,
            "presence_penalty": 0.2, "seed": 7}
TIMEOUT_SECONDS = 120.0
TABLE = Path(__file__).resolve().parent / "data" / "known-answers.json"
log = structlog.get_logger("cloister.known_answer")


def recorded(model_digest: str, engine_kind: str, table: Path = TABLE) -> str | None:
    """The digest recorded for a model (by its digest) on an engine kind, if any."""
    try:
        known = json.loads(table.read_text())
    except FileNotFoundError:
        return None
    value = known.get(engine_kind, {}).get(model_digest)
    return str(value) if value else None


def answer_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class KnownAnswerFailed(Exception):
    """The engine's answer is not the known one, or not an answer."""


async def ask(engine: Engine, model: str, *, timeout: float = TIMEOUT_SECONDS) -> str:
    """The engine's answer to the check's prompt, digested; `KnownAnswerFailed`."""
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                       **SAMPLING}).encode()
    request = EngineRequest("POST", "/v1/completions", body, request_id="known-answer")
    try:
        async with asyncio.timeout(timeout):
            response = await call_engine(engine, request)
            raw = await response.read()
    except TimeoutError:
        raise KnownAnswerFailed(f"the engine did not answer within {timeout:g} s") from None
    if response.status != 200:
        raise KnownAnswerFailed(f"the engine answered HTTP {response.status}")
    try:
        answer = json.loads(raw)
        [choice] = answer["choices"]
        text = choice["text"]
        tokens = answer["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError):
        raise KnownAnswerFailed("the engine's answer is not a completion") from None
    if not isinstance(text, str) or not text or not 0 < tokens <= MAX_TOKENS:
        raise KnownAnswerFailed("the engine's answer is empty or longer than asked")
    return answer_digest(text)


class KnownAnswer:
    """The check's state for one gateway: `ok` once a check held, `reason` when the
    last one failed, `settled` set after the first."""

    def __init__(self, expected: Mapping[str, str | None], *, period: float,
                 count: Callable[[str], None] = lambda result: None,
                 withhold: Callable[[str | None], None] = lambda reason: None,
                 timeout: float = TIMEOUT_SECONDS) -> None:
        """`expected`: per generation model served, its recorded digest (None: none
        recorded); `count`: called with "ok", "mismatch" or "failed" per check;
        `withhold`: called with the reason the engine must serve nothing, or None."""
        self.expected, self.period, self.timeout = dict(expected), period, timeout
        self._count, self._withhold = count, withhold
        self.ok = False
        self.reason: str | None = "the known-answer check has not run yet"
        self.checked_at = 0.0
        self.settled = asyncio.Event()
        self.checks = 0
        self.checked = asyncio.Event()  # set after each check, then replaced (tests wait)
        self.answers: dict[str, str] = {}  # the digests last seen, per model

    async def check(self, engine: Engine) -> bool:
        for model, expected in self.expected.items():
            try:
                seen = await ask(engine, model, timeout=self.timeout)
            except KnownAnswerFailed as exc:
                return self._failed("failed", f"{model}: {exc}")
            self.answers[model] = seen
            if expected is None:
                log.info("known_answer_unrecorded", model=model, digest=seen)
            elif seen != expected:
                return self._failed("mismatch", f"{model}: the engine's answer to the "
                                    "known-answer prompt is not the recorded one")
        self.ok, self.reason, self.checked_at = True, None, time.time()
        self._withhold(None)
        self._count("ok")
        self._done()
        return True

    def _failed(self, result: str, reason: str) -> bool:
        self.ok, self.reason, self.checked_at = False, reason, time.time()
        self._withhold(reason)
        self._count(result)
        log.error("known_answer_failed", result=result, detail=reason)
        self._done()
        return False

    def _done(self) -> None:
        self.checks += 1
        self.settled.set()
        self.checked.set()
        self.checked = asyncio.Event()

    async def run(self, engine: Callable[[], Awaitable[Engine | None]]) -> None:
        """Check the engine once it has started (`engine()`), then every `period`. With
        no manifest, the engine's default model is checked, with no digest recorded."""
        started = await engine()
        if started is None:  # it failed to start: /health says so; nothing to check
            self.settled.set()
            return
        if not self.expected:
            self.expected = {started.model_names()[0]: None}
        while True:
            await self.check(started)
            await asyncio.sleep(self.period)


def expected_answers(manifest: Mapping[str, Any]) -> dict[str, str | None]:
    """Per generation model the manifest names, the known-answer digest it records."""
    models = manifest.get("engine", {}).get("models", []) if manifest else []
    return {str(m.get("name")): (str(m["known_answer"]) if m.get("known_answer") else None)
            for m in models if m.get("role") == "generate"}
