"""What the log holds: a line per receipt or release statement, naming it by digest only.

    "cloister-receipt/v1 " hex(SHA-256(the receipt's wire form))
    "cloister-release/v1 " hex(SHA-256(JCS of the DSSE statement))   (JCS, RFC 8785: a
                                                 client rebuilds it from the JSON it got)
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from enclave.tlog.merkle import leaf_hash


def receipt_entry(wire: str) -> bytes:
    return b"cloister-receipt/v1 " + hashlib.sha256(wire.encode()).hexdigest().encode()


def release_entry(statement: Any) -> bytes:
    """`statement`: the DSSE envelope, parsed JSON."""
    return b"cloister-release/v1 " + hashlib.sha256(rfc8785.dumps(statement)).hexdigest(
    ).encode()


def receipt_leaf(wire: str) -> bytes:
    return leaf_hash(receipt_entry(wire))


def release_leaf(statement: Any) -> bytes:
    return leaf_hash(release_entry(statement))
