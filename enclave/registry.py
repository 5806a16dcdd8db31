"""The one list of wire dialects. The gateway makes their servers and mounts their routes
from it (`gateway.app`), in this order: where several dialects share a path each is asked
in turn whether a request is its own, and the last one there takes the rest. Nothing else
in the server names a dialect; metric labels are the dialects' names.

A new dialect: its module in `enclave/` (a `ServerDialect` that names its routes, and a
`server(setup)` factory) and one entry here; a client side in `proxy/dialects.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from enclave import ehbp, plaintext
from enclave.atoma import dialect as atoma
from enclave.continuum import dialect as continuum
from enclave.dialect import ServerDialect
from enclave.ohttp import dialect as ohttp
from enclave.plugin import DialectSetup


@dataclass(frozen=True)
class Dialect:
    name: str
    server: Callable[[DialectSetup], ServerDialect]


DIALECTS: tuple[Dialect, ...] = (
    Dialect(ohttp.NAME, ohttp.server),
    Dialect(ehbp.NAME, ehbp.server),
    Dialect(atoma.NAME, atoma.server),
    Dialect(continuum.NAME, continuum.server),
    Dialect(plaintext.NAME, plaintext.server),  # last: where a request is no one else's
)
