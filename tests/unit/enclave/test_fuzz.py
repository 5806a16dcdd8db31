"""A brief fuzz pass in `make test` (the long coverage-guided run is
`benchmarks/fuzz.py`): every parser and opener, on random bytes and on mutations of
valid inputs, refuses only with the errors the gateway maps to a stable code; and the
whole gateway, on random bodies at every route, answers no 5xx and keeps serving."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from benchmarks.fuzz_targets import EXPECTED, Target, all_targets
from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.doubles import DeterministicTestEngine

TARGETS = {t.name: t for t in all_targets()}
BRIEF = settings(max_examples=150, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, target: Target) -> bytes:
    """A seed with a few bytes flipped, cut or inserted; or random bytes."""
    if not target.seeds or draw(st.booleans()):
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(target.seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_parser_refuses_garbage_with_a_stable_error(name: str) -> None:
    target = TARGETS[name]

    @BRIEF
    @given(mutated(target))
    def check(data: bytes) -> None:
        # any exception but these fails the test, with the input that raised it
        with contextlib.suppress(*EXPECTED):
            target.run(data)

    check()


ROUTES = ["/v1/chat/completions", "/v1/embeddings", "/.well-known/ohttp-gateway",
          "/v1/confidential/chat/completions", "/v1/secrets", "/v1/nodes/lock"]
HEADERS = [{}, {"content-type": "message/ohttp-req"},
           {"content-type": "message/ohttp-chunked-req"},
           {"ehbp-encapsulated-key": "00" * 32}, {"content-type": "application/json"}]


def test_the_gateway_answers_garbage_without_a_5xx() -> None:
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running)
    with TestClient(app, raise_server_exceptions=True) as client:
        @BRIEF
        @given(st.sampled_from(ROUTES), st.sampled_from(HEADERS), st.binary(max_size=4096))
        def check(route: str, headers: dict[str, str], body: bytes) -> None:
            answer = client.post(route, content=body, headers=headers)
            assert answer.status_code < 500, (route, answer.status_code, answer.text)

        check()
        assert client.get("/health").status_code == 200
