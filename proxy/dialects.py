"""A `GatewayClient` for a dialect the registry names (`enclave.registry`): its client
side is the dialect's own sans-IO `KeyDiscovery`, driven by the client."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import httpx

from enclave.plugin import ClientSetup
from enclave.registry import DIALECTS, Dialect
from proxy.attestor import Attestation
from proxy.client import DEFAULT_LIMITS, GatewayClient


def make_client(gateway_url: str, protocol: str, *, attestation: Attestation,
                transport: httpx.AsyncBaseTransport | None = None,
                api_key: str | None = None,
                keep_receipt: Callable[[Any, bytes | None], None] | None = None,
                limits: httpx.Limits = DEFAULT_LIMITS,
                registry: Sequence[Dialect] = DIALECTS) -> GatewayClient:
    """A client for one gateway in one dialect the registry names with a client side;
    `api_key` is the platform API key Atoma requests carry where the gateway keeps
    accounts (the other dialects are anonymous), sent only over TLS the gateway's report
    binds (an https:// URL: `proxy.pinning`)."""
    entry = next((d for d in registry if d.name == protocol and d.client is not None), None)
    if entry is None or entry.client is None:
        raise ValueError(f"no client side for dialect {protocol!r}")
    def keep(receipt: Any, key: bytes | None) -> None:
        attestation.saw_receipt(receipt)  # continuous attestation: what did it name?
        if keep_receipt is not None:
            keep_receipt(receipt, key)

    return GatewayClient(gateway_url, entry.client(ClientSetup(api_key, keep)),
                         attestation=attestation, transport=transport, limits=limits)
