"""Chunked Oblivious HTTP messages (draft-ietf-ohai-chunked-ohttp-08), both sides.

    Chunked request  = hdr enc {varint(len) HPKE-Seal("", chunk)}* 0 HPKE-Seal("final", last)
    Chunked response = response_nonce {varint(len) Seal(key, nonce_i, "", chunk)}* 0
                       Seal(key, nonce_i, "final", last)

Request chunks use the HPKE context's own sequence numbers. Response chunks use the
response AEAD key with `nonce_i = aead_nonce XOR i` (i big-endian, counting from 0), the
key and nonce derived as in RFC 9458 with the label "message/bhttp chunked response".
The final chunk follows a zero length and runs to the end of the body: a stream that
ends without an authenticated final chunk is truncated, and `finish()` says so.
Reordered, duplicated or altered chunks fail to open; so does an empty non-final chunk.

Openers follow the sans-IO shape of Tinfoil's ehbp `FrameDecryptor`: `push(data)`
returns the plaintext chunks completed so far, `finish()` checks the end.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from enclave.errors import DecryptError, MessageTooLargeError
from enclave.ohttp.encapsulation import ENCAPSULATED_HEADER_SIZE, open_header, setup_sender
from enclave.ohttp.keyconfig import KeyConfig
from enclave.ohttp.protocol import (
    CHUNKED_REQUEST_LABEL,
    CHUNKED_RESPONSE_LABEL,
    FINAL_CHUNK_AAD,
    MAX_CHUNK_PLAINTEXT,
    MAX_CHUNK_SIZE,
    SymmetricSuite,
)
from enclave.ohttp.suites import aead_cipher, response_keys, response_nonce_size
from enclave.ohttp.varint import decode_varint, encode_varint

if TYPE_CHECKING:
    from enclave.keys import KeyRing

class _ChunkFramer:
    """Splits a chunk stream into (ciphertext, is_final) pieces; bounded buffering."""

    def __init__(self, max_chunk: int) -> None:
        self._buf = bytearray()
        self._final: bytearray | None = None
        self._max = max_chunk

    def push(self, data: bytes) -> list[bytes]:
        if self._final is not None:
            self._final += data
            if len(self._final) > self._max:
                raise MessageTooLargeError()
            return []
        self._buf += data
        out: list[bytes] = []
        while True:
            got = decode_varint(self._buf)
            if got is None:
                break
            size, used = got
            if size == 0:
                self._final = bytearray(self._buf[used:])
                self._buf.clear()
                if len(self._final) > self._max:
                    raise MessageTooLargeError()
                break
            if size > self._max:
                raise MessageTooLargeError()
            if len(self._buf) < used + size:
                break
            out.append(bytes(self._buf[used:used + size]))
            del self._buf[:used + size]
        return out

    def final(self) -> bytes:
        """The final chunk's ciphertext, once the body has ended."""
        if self._final is None or self._buf:
            raise DecryptError()
        return bytes(self._final)


def _open_or_fail(open_: Any, ciphertext: bytes, aad: bytes, *, final: bool) -> bytes:
    try:
        plaintext: bytes = open_(ciphertext, aad)
    except Exception:  # noqa: BLE001 - opaque by design
        raise DecryptError() from None
    if not plaintext and not final:
        raise DecryptError()  # an empty non-final chunk is a framing violation
    return plaintext


# --- responses (symmetric, counter nonces) -----------------------------------------------

def _pieces(plaintext: bytes) -> list[bytes]:
    """A non-final chunk's plaintext in pieces of at most `MAX_CHUNK_PLAINTEXT` bytes,
    each sealed as a chunk of its own (the draft's limit for senders; the Binary HTTP
    stream inside may break anywhere)."""
    if not plaintext:
        raise ValueError("a non-final chunk cannot be empty")
    return [plaintext[at:at + MAX_CHUNK_PLAINTEXT]
            for at in range(0, len(plaintext), MAX_CHUNK_PLAINTEXT)]


class ResponseCipher:
    """The response AEAD of a chunked answer: key and base nonce from the HPKE context's
    export under `label`, one nonce per chunk (`base XOR counter`)."""

    def __init__(self, suite: SymmetricSuite, context: Any, enc: bytes, nonce: bytes,
                 label: bytes = CHUNKED_RESPONSE_LABEL) -> None:
        secret = context.export(label, response_nonce_size(suite))
        key, base = response_keys(suite, secret, enc, nonce)
        self._aead = aead_cipher(suite.aead, key)
        self._base = int.from_bytes(base, "big")
        self._size = len(base)
        self.counter = 0

    def next_nonce(self) -> bytes:
        nonce = (self._base ^ self.counter).to_bytes(self._size, "big")
        self.counter += 1
        return nonce

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(self.next_nonce(), plaintext, aad)

    def open(self, ciphertext: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(self.next_nonce(), ciphertext, aad)


class ChunkedResponseSealer:
    """Server side. `start()` first, then `seal_chunk()` per chunk, `seal_final()` last."""

    def __init__(self, suite: SymmetricSuite, context: Any, enc: bytes,
                 *, response_nonce: bytes | None = None) -> None:
        size = response_nonce_size(suite)
        self._nonce = os.urandom(size) if response_nonce is None else response_nonce
        self._cipher = ResponseCipher(suite, context, enc, self._nonce)
        self._finished = False

    def start(self) -> bytes:
        return self._nonce

    def seal_chunk(self, plaintext: bytes) -> bytes:
        if self._finished:
            raise RuntimeError("the response has already ended")
        sealed = b""
        for piece in _pieces(plaintext):
            ciphertext = self._cipher.seal(piece, b"")
            sealed += encode_varint(len(ciphertext)) + ciphertext
        return sealed

    def seal_final(self, plaintext: bytes = b"") -> bytes:
        if self._finished:
            raise RuntimeError("the response has already ended")
        self._finished = True
        return b"\x00" + self._cipher.seal(plaintext, FINAL_CHUNK_AAD)


class ChunkedResponseOpener:
    """Client side: opens a chunked response as it arrives."""

    def __init__(self, suite: SymmetricSuite, context: Any, enc: bytes,
                 *, max_chunk: int = MAX_CHUNK_SIZE) -> None:
        self._suite, self._context, self._enc = suite, context, enc
        self._nonce_size = response_nonce_size(suite)
        self._pending = bytearray()
        self._cipher: ResponseCipher | None = None
        self._framer = _ChunkFramer(max_chunk + suite.aead.tag_size)
        self.complete = False

    def push(self, data: bytes) -> list[bytes]:
        if self._cipher is None:
            self._pending += data
            if len(self._pending) < self._nonce_size:
                return []
            nonce = bytes(self._pending[:self._nonce_size])
            data = bytes(self._pending[self._nonce_size:])
            self._cipher = ResponseCipher(self._suite, self._context, self._enc, nonce)
        cipher = self._cipher
        return [_open_or_fail(cipher.open, ct, b"", final=False) for ct in self._framer.push(data)]

    def finish(self) -> bytes:
        """The final chunk's plaintext; raises `DecryptError` if the stream was truncated."""
        if self._cipher is None:
            raise DecryptError()
        last = _open_or_fail(self._cipher.open, self._framer.final(), FINAL_CHUNK_AAD,
                             final=True)
        self.complete = True
        return last


# --- requests (HPKE context sequence numbers) ---------------------------------------------

class ChunkedRequestSealer:
    """Client side: `header` first, then `seal_chunk()` per chunk, `seal_final()` last."""

    def __init__(self, config: KeyConfig, *, suite: SymmetricSuite | None = None,
                 ephemeral_private_key: bytes | None = None) -> None:
        self.header, self._context, self.suite, self._enc = setup_sender(
            config, suite, CHUNKED_REQUEST_LABEL, ephemeral_private_key=ephemeral_private_key)

    def seal_chunk(self, plaintext: bytes) -> bytes:
        sealed = b""
        for piece in _pieces(plaintext):
            ciphertext: bytes = self._context.seal(piece, b"")
            sealed += encode_varint(len(ciphertext)) + ciphertext
        return sealed

    def seal_final(self, plaintext: bytes = b"") -> bytes:
        ciphertext: bytes = self._context.seal(plaintext, FINAL_CHUNK_AAD)
        return b"\x00" + ciphertext

    def response_opener(self, *, max_chunk: int = MAX_CHUNK_SIZE) -> ChunkedResponseOpener:
        return ChunkedResponseOpener(self.suite, self._context, self._enc, max_chunk=max_chunk)


class ChunkedRequestOpener:
    """Server side: opens a chunked request as it arrives."""

    def __init__(self, keyring: KeyRing, *, max_chunk: int = MAX_CHUNK_SIZE) -> None:
        self._keyring = keyring
        self._pending = bytearray()
        self._opened: Any = None
        self._framer = _ChunkFramer(max_chunk + 16)
        self.complete = False

    def push(self, data: bytes) -> list[bytes]:
        if self._opened is None:
            self._pending += data
            if len(self._pending) < ENCAPSULATED_HEADER_SIZE:
                return []
            self._opened = open_header(self._keyring, bytes(self._pending),
                                       CHUNKED_REQUEST_LABEL)
            data = bytes(self._pending[ENCAPSULATED_HEADER_SIZE:])
            self._pending.clear()
        context = self._opened.context
        return [_open_or_fail(context.open, ct, b"", final=False)
                for ct in self._framer.push(data)]

    def finish(self) -> bytes:
        if self._opened is None:
            raise DecryptError()
        last = _open_or_fail(self._opened.context.open, self._framer.final(), FINAL_CHUNK_AAD,
                             final=True)
        self.complete = True
        return last

    def response_sealer(self, *, response_nonce: bytes | None = None) -> ChunkedResponseSealer:
        if not self.complete:
            raise RuntimeError("open the whole request before answering it")
        return ChunkedResponseSealer(self._opened.suite, self._opened.context,
                                     self._opened.enc, response_nonce=response_nonce)
