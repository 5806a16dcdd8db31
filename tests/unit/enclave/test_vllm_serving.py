"""vLLM's own request models refuse some bodies by raising vLLM's errors from inside
their validators (not pydantic's): those are the client's mistakes and get vLLM's 4xx,
never the gateway's 500 (found by schemathesis over the real engine)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from enclave.vllm_serving import serve_openai


async def _serve(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps(body).encode()}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    state = SimpleNamespace(openai_serving_chat=None, openai_serving_completion=None)
    await serve_openai(state, {"type": "http", "method": "POST", "path": path},
                       receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent
                                       if m["type"] == "http.response.body"))


@pytest.mark.parametrize("body", [{"model": "m", "prompt": None, "max_tokens": 4},
                                  {"model": "m", "prompt": "", "max_tokens": 4}])
async def test_a_body_vllm_s_validators_refuse_is_a_400(body) -> None:
    status, answer = await _serve("/v1/completions", body)
    assert status == 400
    assert "prompt" in answer["error"]["message"]


async def test_a_validator_that_breaks_on_a_body_is_a_400_not_a_500() -> None:
    """vLLM's check of a named `tool_choice` reads `tool["function"]` of every tool and
    raises KeyError on a custom tool (schemathesis over the real engine found it):
    a body the engine's schema cannot take is the client's mistake."""
    status, answer = await _serve("/v1/chat/completions", {
        "model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "custom", "custom": {"name": "x"}}],
        "tool_choice": {"type": "function", "function": {"name": "x"}}})
    assert status == 400
    assert answer["error"]["param"] == "body"
    assert "KeyError" in answer["error"]["message"]
