"""A `GatewayClient` for a dialect the registry names (`enclave.registry`): its client
side is the dialect's own sans-IO `KeyDiscovery`, driven by the client."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from enclave.plugin import ClientSetup
from enclave.registry import DIALECTS, Dialect
from enclave.route_hint import RouteHint, user_key
from enclave.sealed_state import kept_secret
from proxy.attestor import Attestation
from proxy.client import DEFAULT_LIMITS, GatewayClient


def make_client(gateway_url: str, protocol: str, *, attestation: Attestation,
                transport: httpx.AsyncBaseTransport | None = None,
                api_key: str | None = None,
                keep_receipt: Callable[[Any, bytes | None], None] | None = None,
                limits: httpx.Limits = DEFAULT_LIMITS,
                registry: Sequence[Dialect] = DIALECTS,
                route_hint: RouteHint | None = None) -> GatewayClient:
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
                         attestation=attestation, transport=transport, limits=limits,
                         route_hint=route_hint)


ROUTE_HINT_CHOICES = ("auto", "on", "off")
ROUTE_HINT_HELP = ("send the routing hint a balancer hashes on for prefix-cache affinity "
                   "(docs/operating.md): auto, in a dialect whose requests share a prefix "
                   "cache (continuum); on; off. It lets the operator link your requests "
                   "with equal prefixes, never read them")


def route_hint_for(choice: str, protocol: str, state_dir: Path, *,
                   api_key: str | None = None,
                   registry: Sequence[Dialect] = DIALECTS) -> RouteHint | None:
    """The user's routing hints for `--route-hint CHOICE`: `auto` where the dialect's
    requests carry a stable client identity (the gateway shares a prefix cache only
    within one); the key from the user's API key where there is one, else from a secret
    kept in `state_dir` (made on first use)."""
    if choice not in ROUTE_HINT_CHOICES:
        raise ValueError(f"--route-hint is one of {', '.join(ROUTE_HINT_CHOICES)}")
    entry = next((d for d in registry if d.name == protocol), None)
    if choice == "off" or (choice == "auto" and not (entry and entry.stable_client)):
        return None
    if api_key:
        return RouteHint(user_key(api_key.encode()))
    return RouteHint(user_key(kept_secret(state_dir / "route-hint.key", 32)))
