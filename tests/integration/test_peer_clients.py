"""The peers' published clients, unchanged, and the in-process transport, against the real
gateway and its real vLLM engine (the session gateway: simulated TEE, signed release
statement, accounts on its TLS listener)."""

from __future__ import annotations

import ssl

import ehbp as tinfoil
import httpx
import pytest
from atoma_sdk import AtomaSDK
from atoma_sdk import models as atoma_models

from proxy.transport import openai_client
from tests.clients import PROTOCOLS
from tests.integration.conftest import RunningGateway

pytestmark = pytest.mark.engine

MODEL = "cloister-demo"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
CHAT = {"model": MODEL, "max_tokens": 5, "ignore_eos": True,
        "messages": [{"role": "user", "content": "hello"}]}
SDK_CHAT = {"model": MODEL, "max_tokens": 5, "extra_body": {"ignore_eos": True},
            "messages": [{"role": "user", "content": "hello"}]}


def test_tinfoil_ehbp_client(gateway: RunningGateway) -> None:
    with tinfoil.Client.discover(gateway.url) as client:
        reply = client.post("/v1/chat/completions", json_body=CHAT)
        assert reply.status_code == 200
        assert reply.json()["usage"]["completion_tokens"] == 5
        with client.stream("POST", "/v1/chat/completions",
                           json_body={**CHAT, "stream": True}) as answer:
            events = b"".join(answer.iter_bytes())
        # the last event is [DONE] (the receipt after it is a comment, which SSE skips)
        assert events.count(b"data: {") >= 5
        assert [e for e in events.split(b"\n\n") if e and not e.startswith(b":")][-1] == \
            b"data: [DONE]"
        emb = client.post("/v1/embeddings", json_body={"model": EMBEDDING_MODEL,
                                                       "input": "confidential"})
        assert len(emb.json()["data"][0]["embedding"]) == 384


def test_tinfoil_transport_under_the_openai_sdk(gateway: RunningGateway) -> None:
    import openai

    identity = tinfoil.ServerIdentity.unmarshal_public_config(
        httpx.get(f"{gateway.url}/.well-known/hpke-keys").content)
    with httpx.Client(transport=tinfoil.EHBPTransport(identity), timeout=120) as http:
        sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="-", http_client=http)  # type: ignore[arg-type]
        stream = sdk.chat.completions.create(model=MODEL, max_tokens=4, stream=True,
                                             messages=[{"role": "user", "content": "go"}],
                                             extra_body={"ignore_eos": True})
        assert len([c for c in stream if c.choices and c.choices[0].delta.content]) >= 1


def test_atoma_sdk(gateway: RunningGateway, tmp_path) -> None:
    # With accounts, Atoma is on the attested TLS listener: the SDK, unchanged, gets an
    # HTTP client that trusts the certificate `cloister attest --write-cert` checked.
    from tests.integration.conftest import cloister

    cert = tmp_path / "gateway.pem"
    attested = cloister("attest", "--gateway", gateway.tls_url, *gateway.trust_args(),
                        "--write-cert", str(cert), state_dir=gateway.state_dir)
    assert attested.returncode == 0, attested.stderr
    http = httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=120)
    sdk = AtomaSDK(bearer_auth=gateway.api_key, server_url=gateway.tls_url, client=http,
                   timeout_ms=120_000)
    messages = [atoma_models.ChatCompletionMessage(role="user", content="hello")]
    reply = sdk.confidential_chat.create(model=MODEL, max_tokens=5, messages=messages)
    assert isinstance(reply, atoma_models.ChatCompletionResponse)
    assert reply.choices and reply.usage is not None and reply.usage.total_tokens > 0
    chunks = list(sdk.confidential_chat.create_stream(model=MODEL, max_tokens=5,
                                                      messages=messages))
    assert chunks and all(isinstance(c.data, atoma_models.ChatCompletionChunk)
                          for c in chunks)
    emb = sdk.confidential_embeddings.create(model=EMBEDDING_MODEL, input="confidential")
    assert len(emb.data[0].embedding) == 384
    with pytest.raises(atoma_models.APIError) as wrong:
        AtomaSDK(bearer_auth="not-a-key", server_url=gateway.tls_url, client=http
                 ).nodes.nodes_create_lock(model=MODEL)
    assert wrong.value.status_code == 401
    http.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_openai_sdk_in_process_with_real_verification(gateway: RunningGateway, protocol,
                                                          tmp_path) -> None:
    assert gateway.release_key is not None
    sdk = openai_client(gateway.url_for(protocol), protocol=protocol,
                        release_keys=[gateway.release_key],
                        simulated_roots=gateway.simulated_roots, api_key=gateway.api_key,
                        state_dir=tmp_path)
    reply = sdk.chat.completions.create(**SDK_CHAT)
    assert reply.usage.completion_tokens == 5
    stream = sdk.chat.completions.create(**SDK_CHAT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    emb = sdk.embeddings.create(model=EMBEDDING_MODEL, input="confidential")
    assert len(emb.data[0].embedding) == 384
    sdk.close()
