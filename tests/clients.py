"""Clients of an in-process gateway for unit tests, in any dialect.

They use `Unverified` attestation: these tests are about the dialects, and attestation
has tests of its own (`test_attestation_endpoint.py`, the integration suite)."""

from __future__ import annotations

from typing import Any

import httpx

from proxy.attestor import Unverified
from proxy.client import GatewayClient
from proxy.dialects import make_client

PROTOCOLS = ("ohttp", "ehbp", "atoma", "continuum")


def client_for(app: Any, protocol: str = "ohttp", *,
               transport: httpx.AsyncBaseTransport | None = None,
               api_key: str | None = None) -> GatewayClient:
    return make_client("http://gw", protocol, attestation=Unverified(),
                       transport=transport or httpx.ASGITransport(app=app), api_key=api_key)


def unreachable_client(protocol: str = "ohttp") -> GatewayClient:
    """A client of an address where nothing listens."""
    return make_client("http://127.0.0.1:9", protocol, attestation=Unverified())
