"""Clients of an in-process gateway for unit tests, in any dialect.

They use `Unverified` attestation: these tests are about the dialects, and attestation
has tests of its own (`test_attestation_endpoint.py`, the integration suite)."""

from __future__ import annotations

from typing import Any

import httpx

from enclave.registry import sealed_dialects
from proxy.attestor import Unverified
from proxy.client import GatewayClient
from proxy.dialects import make_client

PROTOCOLS = sealed_dialects()  # the dialects a client seals to, as the registry lists them


def client_for(app: Any, protocol: str = "ohttp", *,
               transport: httpx.AsyncBaseTransport | None = None,
               api_key: str | None = None) -> GatewayClient:
    return make_client("http://gw", protocol, attestation=Unverified(),
                       transport=transport or httpx.ASGITransport(app=app), api_key=api_key)


def exercise_openai_sdk(sdk: Any, chat: dict[str, Any], embedding_model: str) -> None:
    """What every SDK-level test checks: a chat completion, a streamed one, embeddings."""
    reply = sdk.chat.completions.create(**chat)
    assert reply.choices[0].message.content
    stream = sdk.chat.completions.create(**chat, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    emb = sdk.embeddings.create(model=embedding_model, input="x")
    assert len(emb.data[0].embedding) == 384


def unreachable_client(protocol: str = "ohttp") -> GatewayClient:
    """A client of an address where nothing listens."""
    return make_client("http://127.0.0.1:9", protocol, attestation=Unverified())
