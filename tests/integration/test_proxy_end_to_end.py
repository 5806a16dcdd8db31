"""The official OpenAI SDK -> `cloister proxy` (verifying the gateway's simulated
attestation first) -> recording relay -> gateway with the real vLLM CPU engine. Nothing
readable of the prompt or the completion crosses the wire."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.balancer import RecordingRelay
from tests.integration.conftest import ROOT, RunningGateway, free_port

pytestmark = pytest.mark.engine

CANARY = "CANARY-7f3a9c-do-not-leak"
MODEL = "cloister-demo"


PROTOCOLS = ["ohttp", "ehbp", "atoma", "continuum"]


@pytest.fixture(scope="module", params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def relay(gateway: RunningGateway, protocol: str) -> Iterator[RecordingRelay]:
    """Between the proxy and the listener its dialect uses (Atoma with accounts: the
    attested TLS one, so the relay sees TLS records only)."""
    port = int(gateway.url_for(protocol).rsplit(":", 1)[1])
    with RecordingRelay("127.0.0.1", port) as r:
        yield r


@pytest.fixture(scope="module")
def proxy_url(relay: RecordingRelay, gateway: RunningGateway, protocol: str, tmp_path_factory
              ) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("proxy") / "proxy.log").open("wb")
    scheme = gateway.url_for(protocol).split(":", 1)[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "proxy", "--gateway", f"{scheme}://127.0.0.1:{relay.port}",
         "--port", str(port), *gateway.trust_args(),
         "--protocol", protocol, "--api-key", gateway.api_key or ""],
        cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        process.kill()
        raise RuntimeError("cloister proxy did not come up")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def sdk(proxy_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="unused-by-the-proxy")


def test_sdk_chat_through_the_proxy(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="latest", max_tokens=8, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "Tell me a story."}])
    assert reply.model == MODEL
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert reply.choices[0].message.content


def test_sdk_streamed_chat_through_the_proxy(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL, max_tokens=10, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}, messages=[{"role": "user", "content": "Go on."}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10


def test_sdk_embeddings_through_the_proxy(sdk: openai.OpenAI) -> None:
    emb = sdk.embeddings.create(model="latest", input=["confidential", "inference"])
    assert [len(d.embedding) for d in emb.data] == [384, 384]


WIRE_MARKERS = {"ohttp": (b"message/ohttp-req", b"message/ohttp-chunked-res"),
                "ehbp": (b"Ehbp-Encapsulated-Key", b"Ehbp-Response-Nonce"),
                # TLS application-data records: the envelope itself is inside the TLS
                "atoma": (b"\x17\x03\x03", b"\x17\x03\x03"),
                "continuum": (b"/v1/secrets", b"chat.completion.chunk")}


def test_canary_and_its_completion_never_cross_the_wire_in_plaintext(
        sdk: openai.OpenAI, relay: RecordingRelay, protocol: str) -> None:
    mark = relay.mark()
    reply = sdk.chat.completions.create(
        model=MODEL, max_tokens=24, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": f"Repeat after me: {CANARY}"}])
    completion = reply.choices[0].message.content or ""
    stream = sdk.chat.completions.create(
        model=MODEL, max_tokens=24, stream=True, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": f"Again: {CANARY}"}])
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    upstream, downstream = relay.since(mark)
    up_marker, down_marker = WIRE_MARKERS[protocol]
    assert up_marker.lower() in upstream.lower() or up_marker in relay.since((0, 0))[0]
    assert down_marker.lower() in downstream.lower()
    wire = upstream + downstream
    assert len(completion) >= 16 and len(streamed) >= 16
    for secret in (CANARY, completion, streamed):
        assert secret.encode() not in wire
        assert secret.encode("unicode_escape") not in wire
    assert b"Repeat after me" not in wire


def test_cloister_attest_verifies_the_running_gateway(gateway: RunningGateway) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "cli", "attest", "--gateway", gateway.url, "--json",
         *gateway.trust_args()],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    claims = __import__("json").loads(ok.stdout)
    assert claims["platform"] == "simulated-sev-snp"
    assert claims["gpus"][0]["driver"] == "550.90.07"
    assert claims["reference_values"]["version"] == 1
    refused = subprocess.run(  # the operator's key, but not the simulated hardware roots
        [sys.executable, "-m", "cli", "attest", "--gateway", gateway.url,
         "--release-key", str(gateway.release_key)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "untrusted_root" in refused.stderr
