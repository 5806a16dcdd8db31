"""Oblivious HTTP request and response encapsulation (RFC 9458 section 4), both sides.

Request (section 4.3):
    hdr  = key_id(1) kem_id(2) kdf_id(2) aead_id(2)
    info = "message/bhttp request" 0x00 hdr
    enc, sctxt = SetupBaseS(pkR, info);  body = hdr enc sctxt.Seal("", request)
Response (section 4.4):
    secret = context.Export("message/bhttp response", max(Nn, Nk))
    response_nonce = random(max(Nn, Nk))
    aead_key, aead_nonce = from Extract(enc response_nonce, secret)  (see suites.py)
    body = response_nonce Seal(aead_key, aead_nonce, "", response)

The header and HPKE setup here are shared with the chunked variant (chunked.py), which
differs only in its labels and in framing. Any failure to open is a `DecryptError`; a
key id or suite the gateway does not accept is an `UnknownKeyError`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyhpke import KEMKeyPair

from enclave.errors import DecryptError, UnknownKeyError
from enclave.ohttp.keyconfig import KeyConfig
from enclave.ohttp.protocol import (
    KEM_X25519_HKDF_SHA256,
    NENC_X25519,
    OFFERED_SUITES,
    REQUEST_HEADER_SIZE,
    REQUEST_LABEL,
    RESPONSE_LABEL,
    Aead,
    Kdf,
    SymmetricSuite,
)
from enclave.ohttp.suites import aead_cipher, hpke_suite, response_keys, response_nonce_size

if TYPE_CHECKING:
    from enclave.keys import KeyRing

ENCAPSULATED_HEADER_SIZE = REQUEST_HEADER_SIZE + NENC_X25519


@dataclass(frozen=True)
class OpenedHeader:
    """The server's side of an HPKE context set up from a request header."""

    context: Any  # pyhpke recipient context
    suite: SymmetricSuite
    enc: bytes


def request_header(key_id: int, suite: SymmetricSuite) -> bytes:
    return struct.pack("!BHHH", key_id, KEM_X25519_HKDF_SHA256, suite.kdf, suite.aead)


def open_header(keyring: KeyRing, data: bytes, label: bytes) -> OpenedHeader:
    """Parse `hdr enc` at the start of `data` and set up the recipient context."""
    if len(data) < ENCAPSULATED_HEADER_SIZE:
        raise DecryptError()
    key_id, kem_id, kdf_id, aead_id = struct.unpack_from("!BHHH", data)
    key = keyring.lookup(key_id)
    suite = _offered_suite(kdf_id, aead_id)
    if key is None or kem_id != KEM_X25519_HKDF_SHA256 or suite is None:
        raise UnknownKeyError()
    enc = bytes(data[REQUEST_HEADER_SIZE:ENCAPSULATED_HEADER_SIZE])
    info = label + b"\x00" + bytes(data[:REQUEST_HEADER_SIZE])
    try:
        context = hpke_suite(suite).create_recipient_context(enc, key.private_key, info)
    except Exception:  # noqa: BLE001 - e.g. a low-order point: opaque by design
        raise DecryptError() from None
    return OpenedHeader(context, suite, enc)


def _offered_suite(kdf_id: int, aead_id: int) -> SymmetricSuite | None:
    for suite in OFFERED_SUITES:
        if suite.kdf == kdf_id and suite.aead == aead_id:
            return suite
    return None


def setup_sender(
    config: KeyConfig, suite: SymmetricSuite | None, label: bytes,
    *, ephemeral_private_key: bytes | None = None,
) -> tuple[bytes, Any, SymmetricSuite, bytes]:
    """Client side: (hdr enc, sender context, suite, enc).

    `ephemeral_private_key` fixes skE for known-answer tests; never pass it otherwise.
    """
    suite = suite or choose_suite(config)
    if not config.supports(suite):
        raise UnknownKeyError()
    hpke = hpke_suite(suite)
    pk = hpke.kem.deserialize_public_key(config.public_key)
    eks = None
    if ephemeral_private_key is not None:
        sk = hpke.kem.deserialize_private_key(ephemeral_private_key)
        pub = X25519PrivateKey.from_private_bytes(ephemeral_private_key).public_key()
        eks = KEMKeyPair(sk, hpke.kem.deserialize_public_key(pub.public_bytes_raw()))
    header = request_header(config.key_id, suite)
    enc, context = hpke.create_sender_context(pk, label + b"\x00" + header, eks=eks)
    return header + enc, context, suite, enc


def choose_suite(config: KeyConfig) -> SymmetricSuite:
    """The first suite of ours that the configuration offers."""
    for suite in OFFERED_SUITES:
        if config.supports(suite):
            return suite
    raise UnknownKeyError()


# --- single-shot messages ---------------------------------------------------------------

class ResponseSealer:
    """Server side: encapsulates the one response to a decapsulated request."""

    def __init__(self, opened: OpenedHeader) -> None:
        self._opened = opened

    @property
    def opened(self) -> OpenedHeader:
        """The request's HPKE context (for a dialect that streams its answer)."""
        return self._opened

    def seal(self, response: bytes, *, response_nonce: bytes | None = None) -> bytes:
        suite = self._opened.suite
        size = response_nonce_size(suite)
        nonce = os.urandom(size) if response_nonce is None else response_nonce
        secret = self._opened.context.export(RESPONSE_LABEL, size)
        key, aead_nonce = response_keys(suite, secret, self._opened.enc, nonce)
        return nonce + aead_cipher(suite.aead, key).encrypt(aead_nonce, response, b"")


def decapsulate_request(keyring: KeyRing, data: bytes) -> tuple[bytes, ResponseSealer]:
    """Server side: the Binary HTTP request inside `data`, and how to answer it."""
    opened = open_header(keyring, data, REQUEST_LABEL)
    try:
        request = opened.context.open(bytes(data[ENCAPSULATED_HEADER_SIZE:]), b"")
    except Exception:  # noqa: BLE001 - any failure is the same failure
        raise DecryptError() from None
    return request, ResponseSealer(opened)


class ClientRequest:
    """Client side: an encapsulated request and the means to open its response."""

    def __init__(self, config: KeyConfig, request: bytes, *, suite: SymmetricSuite | None = None,
                 ephemeral_private_key: bytes | None = None) -> None:
        prefix, self._context, self.suite, self._enc = setup_sender(
            config, suite, REQUEST_LABEL, ephemeral_private_key=ephemeral_private_key)
        self.data = prefix + self._context.seal(request, b"")

    def open_response(self, data: bytes) -> bytes:
        size = response_nonce_size(self.suite)
        if len(data) < size + self.suite.aead.tag_size:
            raise DecryptError()
        nonce, ciphertext = data[:size], data[size:]
        secret = self._context.export(RESPONSE_LABEL, size)
        key, aead_nonce = response_keys(self.suite, secret, self._enc, nonce)
        try:
            return aead_cipher(self.suite.aead, key).decrypt(aead_nonce, ciphertext, b"")
        except Exception:  # noqa: BLE001
            raise DecryptError() from None


__all__ = ["Aead", "ClientRequest", "Kdf", "ResponseSealer", "decapsulate_request"]
