"""What a dialect's server is made from at the gateway's start (`DialectSetup`): each
dialect module has a `server(setup)` factory, and `enclave.registry` lists them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from enclave.keys import KeyRing


@dataclass(frozen=True)
class DialectSetup:
    """What a dialect's server is made from, at the gateway's start."""

    keyring: KeyRing
    # A fleet replica's keys come from the fleet's seed (`enclave.fleet`): `derive(label,
    # size)`; None: made here.
    derive: Callable[[str, int], bytes] | None = None
    secrets_per_client: int = 64  # Continuum: secrets one client may hold at once
    insecure_plaintext: bool = False  # the development plaintext routes take prompts


@dataclass(frozen=True)
class ClientSetup:
    """What a dialect's client side (its `KeyDiscovery`) is made from."""

    api_key: str | None = None  # Atoma: the platform API key sent as Bearer
    # Where a receipt goes once the client has checked it (with the receipt key the report
    # bound, None unverified): the proxy's `proxy.receipts.ReceiptLog`.
    keep_receipt: Callable[[Any, bytes | None], None] | None = None
