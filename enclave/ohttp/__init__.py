"""Oblivious HTTP (RFC 9458), Binary HTTP (RFC 9292) and chunked OHTTP, sans-IO.

One implementation for both sides: the gateway decapsulates requests and seals
responses, the proxy and client library do the reverse with the same code.
"""

from enclave.ohttp.chunked import (
    ChunkedRequestOpener,
    ChunkedRequestSealer,
    ChunkedResponseOpener,
    ChunkedResponseSealer,
)
from enclave.ohttp.encapsulation import ClientRequest, ResponseSealer, decapsulate_request
from enclave.ohttp.keyconfig import KeyConfig, decode_key_configs, encode_key_configs

__all__ = [
    "ChunkedRequestOpener",
    "ChunkedRequestSealer",
    "ChunkedResponseOpener",
    "ChunkedResponseSealer",
    "ClientRequest",
    "KeyConfig",
    "ResponseSealer",
    "decapsulate_request",
    "decode_key_configs",
    "encode_key_configs",
]
