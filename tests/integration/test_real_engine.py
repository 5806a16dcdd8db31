"""The gateway with the real embedded vLLM CPU engine: the contract test for vLLM's
in-process serving layer (chat, stream, completion, embedding, models, disconnect)."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest

from tests.waiting import wait_until

pytestmark = pytest.mark.engine

MODEL = "cloister-demo"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 12, "ignore_eos": True}


def sse_payloads(text: str) -> list[dict | str]:
    out: list[dict | str] = []
    for event in text.split("\n\n"):
        if event.startswith("data: "):
            data = event.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def metric(client: httpx.Client, name: str) -> float:
    """Sum of one metric's samples (across labels) in the gateway's /metrics scrape."""
    total, found = 0.0, False
    for line in client.get("/metrics").text.splitlines():
        if line.startswith((name + " ", name + "{")):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} missing from /metrics"
    return total


def unfinished(client: httpx.Client) -> float:
    return metric(client, "cloister_engine_requests_unfinished")


def test_models_list_both_engines_with_max_model_len(client: httpx.Client) -> None:
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert cards[MODEL]["max_model_len"] == 2048
    assert cards[EMBEDDING_MODEL]["max_model_len"] > 0
    assert cards[MODEL]["object"] == "model"


def test_chat_completion_reports_usage(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["prompt_tokens"] > 0


def test_streamed_chat_ends_with_usage_and_done(client: httpx.Client) -> None:
    req = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(r.read().decode())
    assert payloads[-1] == "[DONE]"
    chunks = [p for p in payloads[:-1] if isinstance(p, dict)]
    assert all(p["object"] == "chat.completion.chunk" for p in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text) > 0


def test_completion(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "Once upon a time",
                                              "max_tokens": 5, "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion"
    assert r.json()["usage"]["completion_tokens"] == 5


def test_embedding_is_a_384_dim_unit_vector(client: httpx.Client) -> None:
    r = client.post("/v1/embeddings", json={"model": EMBEDDING_MODEL,
                                             "input": ["confidential computing", "a cat"]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2
    for item in data:
        assert len(item["embedding"]) == 384
        assert math.sqrt(sum(x * x for x in item["embedding"])) == pytest.approx(1.0, abs=1e-3)
    assert data[0]["embedding"] != data[1]["embedding"]


def test_openai_sdk_against_development_plaintext_channel(gateway) -> None:
    import openai

    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    reply = sdk.chat.completions.create(model=MODEL, max_tokens=4,
                                        messages=[{"role": "user", "content": "hi"}])
    assert reply.usage is not None and reply.usage.completion_tokens <= 4
    emb = sdk.embeddings.create(model=EMBEDDING_MODEL, input="hello")
    assert len(emb.data[0].embedding) == 384


def test_bad_input_gets_stable_codes_and_server_keeps_serving(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    r = client.post("/v1/chat/completions", json={"model": MODEL})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
    r = client.post("/v1/chat/completions", content=b"{oops")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_client_disconnect_mid_stream_aborts_engine_request(gateway) -> None:
    max_tokens = 1900
    req = {**CHAT, "max_tokens": max_tokens, "stream": True}
    with httpx.Client(base_url=gateway.metrics_url, timeout=60) as watcher:
        generated_before = metric(watcher, "vllm:generation_tokens_total")
        with (httpx.Client(base_url=gateway.url, timeout=60) as streamer,
              streamer.stream("POST", "/v1/chat/completions", json=req) as r):
            events = r.iter_lines()
            for _ in range(6):  # a few events in: the request is running
                next(events)
            assert unfinished(watcher) >= 1
        # leaving the blocks closed the connection mid-stream
        assert wait_until(lambda: unfinished(watcher), lambda n: n == 0) == 0
        time.sleep(1)  # let the engine's last stats reach the frontend
        generated = metric(watcher, "vllm:generation_tokens_total") - generated_before
    # Aborted, not finished: the engine stopped well short of max_tokens.
    assert 0 < generated < max_tokens * 0.9
