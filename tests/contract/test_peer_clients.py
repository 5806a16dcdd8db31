"""The peers' own published clients, unchanged, against a served gateway (the test engine;
`tests/integration/test_peer_clients.py` runs them against the real one):

- Tinfoil's `tinfoil-ehbp`: `Client.discover` + `request`/`stream`, `EHBPTransport` under
  the OpenAI SDK, and recovery from a rotated key (its `KeyConfigMismatchError`, then a
  new `discover`).
- `atoma-sdk`: `nodes_create_lock`, `confidential_chat.create`/`create_stream`,
  `confidential_embeddings.create`, with a platform API key as Bearer token; answers
  validated by the SDK's own models; its errors for a wrong token and an unknown model.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import ehbp as tinfoil
import httpx
import openai
import pytest
from atoma_sdk import AtomaSDK
from atoma_sdk import models as atoma_models

from enclave.sealed_state import DataKey
from gateway.app import create_app
from gateway.config import ServeConfig
from gateway.platform_store import PlatformStore
from gateway.tls import make_tls_identity
from testkit.doubles import CHAT_MODEL, EMBEDDING_DIM, EMBEDDING_MODEL, DeterministicTestEngine
from tests.clients import exercise_openai_sdk
from tests.served import served
from tests.unit.gateway.test_platform import new_key

CHAT = {"model": CHAT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _app(tmp_path: Path, clock: Clock | None = None, **settings: object):
    store = PlatformStore(f"sqlite:///{tmp_path / 'platform.db'}",
                          DataKey.from_key_file(tmp_path / "data-key"))
    identity = make_tls_identity(["127.0.0.1"])
    app = create_app(ServeConfig.of(**settings), DeterministicTestEngine().running,  # type: ignore[arg-type]
                     platform_store=store, tls_spki_sha256=identity.spki_sha256,
                     **({"clock": clock} if clock else {}))
    return app, store, identity


@contextlib.contextmanager
def gateway(tmp_path: Path, clock: Clock | None = None, **settings: object
            ) -> Iterator[tuple[str, PlatformStore]]:
    app, store, _ = _app(tmp_path, clock, **settings)
    with served(app) as url:
        yield url, store


@contextlib.contextmanager
def attested_tls_gateway(tmp_path: Path) -> Iterator[tuple[str, str, PlatformStore,
                                                           httpx.Client]]:
    """The gateway with its attested TLS listener, where Atoma with accounts is served:
    (the public URL, the https URL, the store, an HTTP client that trusts exactly the
    listener's certificate, as a client does once the report binds it)."""
    app, store, identity = _app(tmp_path)
    pinned = ssl.create_default_context(cadata=identity.cert_pem.decode())
    with served(app) as url, served(app.tls_app, tls=identity) as tls_url, \
            httpx.Client(verify=pinned, timeout=60) as http:
        yield url, tls_url, store, http


# --- Tinfoil's EHBP client ------------------------------------------------------------------

def test_tinfoil_client_discovers_the_key_and_round_trips(tmp_path) -> None:
    with gateway(tmp_path) as (url, _), tinfoil.Client.discover(url) as client:
        reply = client.post("/v1/chat/completions", json_body=CHAT)
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"]
        embedded = client.post("/v1/embeddings", json_body={"model": EMBEDDING_MODEL,
                                                            "input": "secret"})
        assert len(embedded.json()["data"][0]["embedding"]) == EMBEDDING_DIM
        with client.stream("POST", "/v1/chat/completions",
                           json_body={**CHAT, "stream": True}) as answer:
            events = b"".join(answer.iter_bytes())
        assert answer.status_code == 200
        # the last event is [DONE] (the receipt after it is a comment, which SSE skips)
        assert [e for e in events.split(b"\n\n") if e and not e.startswith(b":")][-1] == \
            b"data: [DONE]"
        contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                    for e in events.split(b"\n\n") if e.startswith(b"data: {")
                    and json.loads(e[6:])["choices"]]
        assert "".join(contents)


def test_tinfoil_transport_under_the_openai_sdk(tmp_path) -> None:
    with gateway(tmp_path) as (url, _):
        keys = httpx.get(f"{url}/.well-known/hpke-keys")
        identity = tinfoil.ServerIdentity.unmarshal_public_config(keys.content)
        http = httpx.Client(transport=tinfoil.EHBPTransport(identity))
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http)
        exercise_openai_sdk(sdk, CHAT, EMBEDDING_MODEL)
        http.close()


def test_tinfoil_client_recovers_from_a_rotated_key(tmp_path) -> None:
    clock = Clock()
    with gateway(tmp_path, clock, key_rotation_seconds=3600, key_grace_seconds=60) as (url, _):
        client = tinfoil.Client.discover(url)
        assert client.post("/v1/chat/completions", json_body=CHAT).status_code == 200
        clock.now += 3601
        assert httpx.get(f"{url}/.well-known/hpke-keys").status_code == 200  # rotated
        clock.now += 61  # past the grace window: the discovered key is gone
        with pytest.raises(tinfoil.KeyConfigMismatchError):
            client.post("/v1/chat/completions", json_body=CHAT)
        client.close()
        with tinfoil.Client.discover(url) as fresh:  # what its users do on that error
            assert fresh.post("/v1/chat/completions", json_body=CHAT).status_code == 200


# --- the Atoma SDK --------------------------------------------------------------------------

def test_atoma_sdk_end_to_end_with_a_platform_key(tmp_path) -> None:
    with attested_tls_gateway(tmp_path) as (_, tls_url, store, http):
        key, record = new_key(store, "atoma", budget_tokens=10_000)
        sdk = AtomaSDK(bearer_auth=key, server_url=tls_url, client=http)
        lock = sdk.nodes.nodes_create_lock(model=CHAT_MODEL)
        assert isinstance(lock, atoma_models.NodesCreateLockResponse)
        reply = sdk.confidential_chat.create(
            model=CHAT_MODEL, max_tokens=4,
            messages=[atoma_models.ChatCompletionMessage(role="user", content="hi")])
        assert isinstance(reply, atoma_models.ChatCompletionResponse)
        assert reply.choices[0].message.content
        chunks = list(sdk.confidential_chat.create_stream(
            model=CHAT_MODEL, max_tokens=4,
            messages=[atoma_models.ChatCompletionMessage(role="user", content="hi")]))
        assert chunks and all(isinstance(c, atoma_models.ChatCompletionStreamResponse)
                              for c in chunks)
        assert "".join(c.data.choices[0].delta.content or "" for c in chunks)
        emb = sdk.confidential_embeddings.create(model=EMBEDDING_MODEL, input="x")
        assert len(emb.data[0].embedding) == EMBEDDING_DIM
        used = store.get_api_key(record.id)
        assert used.used_tokens > 0 and used.requests == 3  # budgets apply to Atoma too


def test_atoma_sdk_sees_the_errors_it_expects(tmp_path) -> None:
    with attested_tls_gateway(tmp_path) as (url, tls_url, store, http):
        key, _ = new_key(store, "atoma")
        with pytest.raises(atoma_models.APIError) as wrong:
            AtomaSDK(bearer_auth="wrong", server_url=tls_url, client=http
                     ).nodes.nodes_create_lock(model=CHAT_MODEL)
        assert wrong.value.status_code == 401
        with pytest.raises(atoma_models.APIError, match="Status 401"):  # wrapped by the SDK
            AtomaSDK(bearer_auth="wrong", server_url=tls_url, client=http
                     ).confidential_chat.create(model=CHAT_MODEL,
                                                messages=[{"role": "user", "content": "hi"}])
        anonymous = http.post(f"{tls_url}/v1/confidential/chat/completions", json={})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "AuthError"
        with pytest.raises(atoma_models.APIError) as unknown:
            AtomaSDK(bearer_auth=key, server_url=tls_url, client=http
                     ).nodes.nodes_create_lock(model="nope")
        assert unknown.value.status_code == 404
        malformed = http.post(f"{tls_url}/v1/confidential/chat/completions",
                              headers={"authorization": f"Bearer {key}"},
                              json={"ciphertext": "!!", "stream": False})
        assert malformed.status_code == 400
        assert malformed.json()["error"]["type"] == "InvalidBody"
        with pytest.raises(atoma_models.APIError) as plain:  # the key never goes in clear
            AtomaSDK(bearer_auth=key, server_url=url).nodes.nodes_create_lock(
                model=CHAT_MODEL)
        assert plain.value.status_code == 403
        assert httpx.get(f"{url}/health").status_code == 200
