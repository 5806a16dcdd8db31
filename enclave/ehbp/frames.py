"""EHBP's protocol, sans-IO: the published key configuration, the framing, and the
sealing of requests and responses (constants as in Tinfoil's ehbp `protocol.py`; see the
package's docstring). The dialect's two sides are in `enclave.ehbp.dialect`."""


from __future__ import annotations

import os
import struct
from typing import Any

from enclave.errors import (
    DecryptError,
    MessageTooLargeError,
    UnknownKeyError,
)
from enclave.keys import HpkeKeyPair, KeyRing
from enclave.ohttp.keyconfig import KeyConfig
from enclave.ohttp.protocol import (
    KEM_X25519_HKDF_SHA256,
    Aead,
    Kdf,
    SymmetricSuite,
)
from enclave.ohttp.suites import aead_cipher, hkdf_expand, hkdf_extract, hpke_suite

KEYS_PATH = "/.well-known/hpke-keys"
ENCAPSULATED_KEY_HEADER = "Ehbp-Encapsulated-Key"
RESPONSE_NONCE_HEADER = "Ehbp-Response-Nonce"
REQUEST_INFO = b"ehbp request"
RESPONSE_EXPORT_LABEL = b"ehbp response"
KEY_CONFIG_PROBLEM_TYPE = "urn:ietf:params:ehbp:error:key-config"
KEY_ID = 0
SUITE = SymmetricSuite(Kdf.HKDF_SHA256, Aead.AES_256_GCM)
RESPONSE_NONCE_SIZE = 32
SECRET_SIZE = 32
ENC_SIZE = 32
# One frame is one SSE event or one request body piece.
MAX_FRAME_SIZE = 1 << 20


def key_config(key: HpkeKeyPair) -> KeyConfig:
    """How EHBP publishes the enclave's current key: key_id 0, one suite."""
    return KeyConfig(KEY_ID, KEM_X25519_HKDF_SHA256, key.public_key, (SUITE,))


def frame(ciphertext: bytes) -> bytes:
    return struct.pack(">I", len(ciphertext)) + ciphertext


class FrameSplitter:
    """`u32 BE length || bytes` frames out of a byte stream, bounded."""

    def __init__(self, max_frame: int = MAX_FRAME_SIZE + 16) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def push(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (size,) = struct.unpack_from(">I", self._buf)
            if size > self._max:
                raise MessageTooLargeError()
            if len(self._buf) < 4 + size:
                break
            out.append(bytes(self._buf[4:4 + size]))
            del self._buf[:4 + size]
        return out

    def finish(self) -> None:
        if self._buf:
            raise DecryptError()  # a partial frame


# --- responses ----------------------------------------------------------------------------

class _FrameCipher:
    def __init__(self, context: Any, enc: bytes, nonce: bytes) -> None:
        secret = context.export(RESPONSE_EXPORT_LABEL, SECRET_SIZE)
        prk = hkdf_extract(enc + nonce, secret)
        self._aead = aead_cipher(SUITE.aead, hkdf_expand(prk, b"key", 32))
        self._base = int.from_bytes(hkdf_expand(prk, b"nonce", 12), "big")
        self._counter = 0

    def _nonce(self) -> bytes:
        # i occupies the low 8 bytes, big-endian, XORed into the 12-byte base.
        nonce = (self._base ^ self._counter).to_bytes(12, "big")
        self._counter += 1
        return nonce

    def seal(self, plaintext: bytes) -> bytes:
        return frame(self._aead.encrypt(self._nonce(), plaintext, b""))

    def open(self, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(), ciphertext, b"")
        except Exception:  # noqa: BLE001
            raise DecryptError() from None


class FrameSealer:
    """Server side: `nonce_header` goes in Ehbp-Response-Nonce; `seal(chunk)` per chunk."""

    def __init__(self, context: Any, enc: bytes, *, nonce: bytes | None = None) -> None:
        self.nonce = os.urandom(RESPONSE_NONCE_SIZE) if nonce is None else nonce
        self._cipher = _FrameCipher(context, enc, self.nonce)

    @property
    def nonce_header(self) -> str:
        return self.nonce.hex()

    def seal(self, plaintext: bytes) -> bytes:
        return self._cipher.seal(plaintext)


class FrameOpener:
    """Client side: opens response frames as they arrive."""

    def __init__(self, context: Any, enc: bytes, nonce_header: str) -> None:
        try:
            nonce = bytes.fromhex(nonce_header)
        except ValueError:
            raise DecryptError() from None
        if len(nonce) != RESPONSE_NONCE_SIZE:
            raise DecryptError()
        self._cipher = _FrameCipher(context, enc, nonce)
        self._frames = FrameSplitter()

    def push(self, data: bytes) -> list[bytes]:
        return [self._cipher.open(ct) for ct in self._frames.push(data)]

    def finish(self) -> None:
        self._frames.finish()


# --- requests -----------------------------------------------------------------------------

class RequestSealer:
    """Client side: `encapsulated_key_header` goes in Ehbp-Encapsulated-Key."""

    def __init__(self, config: KeyConfig) -> None:
        if not config.supports(SUITE):
            raise UnknownKeyError()
        hpke = hpke_suite(SUITE)
        self._enc, self._context = hpke.create_sender_context(
            hpke.kem.deserialize_public_key(config.public_key), REQUEST_INFO)

    @property
    def encapsulated_key_header(self) -> str:
        return bytes(self._enc).hex()

    def seal(self, plaintext: bytes) -> bytes:
        ciphertext: bytes = self._context.seal(plaintext, b"")
        return frame(ciphertext)

    def response_opener(self, nonce_header: str) -> FrameOpener:
        return FrameOpener(self._context, self._enc, nonce_header)


def open_request(keyring: KeyRing, encapsulated_key: str, body: bytes
                 ) -> tuple[bytes, FrameSealer]:
    """Server side: the plaintext body, and the sealer for its response.

    The request names no key id, so each key the gateway still honours is tried; a body
    that opens under none of them is a stale key configuration (`UnknownKeyError`), the
    answer EHBP clients act on by refetching keys.
    """
    try:
        enc = bytes.fromhex(encapsulated_key)
    except ValueError:
        raise DecryptError() from None
    if len(enc) != ENC_SIZE:
        raise DecryptError()
    frames = FrameSplitter()
    ciphertexts = frames.push(body)
    frames.finish()
    for key in keyring.honoured_keys():
        try:
            context = hpke_suite(SUITE).create_recipient_context(enc, key.private_key,
                                                                 REQUEST_INFO)
            plaintext = b"".join(context.open(ct, b"") for ct in ciphertexts)
        except Exception:  # noqa: BLE001 - try the next key; opaque by design
            continue
        return plaintext, FrameSealer(context, enc)
    raise UnknownKeyError()


