"""The one list of wire dialects. The gateway makes their servers and mounts their routes
from it (`gateway.app`), in this order: where several dialects share a path each is asked
in turn whether a request is its own, and the last one there takes the rest. Nothing else
in the server names a dialect; metric labels are the dialects' names.

A new dialect: its module in `enclave/` (a `ServerDialect` that names its routes, a
`KeyDiscovery` for its client side, and their `server(setup)` and `client(setup)`
factories) and one entry here. The gateway mounts it, the proxy discovers its keys and
offers it as a `--protocol`, and the tests run their contract over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from enclave import ehbp, plaintext
from enclave.atoma import dialect as atoma
from enclave.continuum import dialect as continuum
from enclave.dialect import KeyDiscovery, ServerDialect
from enclave.ohttp import azure as azure_ohttp
from enclave.ohttp import dialect as ohttp
from enclave.plugin import ClientSetup, DialectSetup


@dataclass(frozen=True)
class Dialect:
    name: str
    server: Callable[[DialectSetup], ServerDialect]
    # Its client side: how a client finds and checks the keys it publishes (None: a
    # client speaks it without keys, as plain OpenAI).
    client: Callable[[ClientSetup], KeyDiscovery] | None = None
    # Whether one client's requests carry a stable identity (a tenant), so that they
    # share a prefix cache at the gateway; the routing hint is on by default only then.
    stable_client: bool = False


DIALECTS: tuple[Dialect, ...] = (
    Dialect(ohttp.NAME, ohttp.server, ohttp.client),
    Dialect(azure_ohttp.NAME, azure_ohttp.server),  # Azure's OHTTP convention (server only)
    Dialect(ehbp.NAME, ehbp.server, ehbp.client),
    Dialect(atoma.NAME, atoma.server, atoma.client),
    Dialect(continuum.NAME, continuum.server, continuum.client, stable_client=True),
    Dialect(plaintext.NAME, plaintext.server),  # last: where a request is no one else's
)


def sealed_dialects(registry: tuple[Dialect, ...] = DIALECTS) -> tuple[str, ...]:
    """The names a client can seal to (the proxy's `--protocol` choices)."""
    return tuple(entry.name for entry in registry if entry.client is not None)
