"""An Oblivious HTTP client written from RFC 9458, RFC 9180 (HPKE base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM) and RFC 9292 (Binary HTTP, known
length), on `cryptography`'s primitives only: no Cloister code and no pyhpke, so that what
it finds is the gateway's departure from the RFCs, not an agreement of one library with
itself. A test double: it checks conformance and is never shipped.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEM, KDF, AEAD = 0x0020, 0x0001, 0x0001
NK, NN, NH = 16, 12, 32
RESPONSE_NONCE_SIZE = max(NN, NK)


def _extract(salt: bytes, ikm: bytes) -> bytes:
    mac = hmac.HMAC(salt or b"\x00" * NH, hashes.SHA256())
    mac.update(ikm)
    return mac.finalize()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        mac = hmac.HMAC(prk, hashes.SHA256())
        mac.update(block + info + bytes([counter]))
        block = mac.finalize()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, struct.pack("!H", length) + b"HPKE-v1" + suite + label + info, length)


def _varint(n: int) -> bytes:  # RFC 9000 section 16
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return struct.pack("!H", n | 0x4000)
    return struct.pack("!I", n | 0x80000000)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    size = 1 << (data[at] >> 6)
    value = int.from_bytes(data[at:at + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, at + size


def _read_bytes(data: bytes, at: int) -> tuple[bytes, int]:
    length, at = _read_varint(data, at)
    if at + length > len(data):
        raise ValueError("truncated")
    return data[at:at + length], at + length


def bhttp_request(method: str, path: str, headers: list[tuple[str, str]], content: bytes
                  ) -> bytes:
    """RFC 9292 known-length request (framing indicator 0)."""
    fields = b"".join(_varint(len(n)) + n.encode() + _varint(len(v)) + v.encode()
                      for n, v in headers)
    out = _varint(0)
    for text in (method, "https", "gateway", path):
        out += _varint(len(text)) + text.encode()
    return out + _varint(len(fields)) + fields + _varint(len(content)) + content + _varint(0)


@dataclass
class BinaryResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""


def parse_bhttp_response(data: bytes) -> BinaryResponse:
    """RFC 9292 known-length response (framing indicator 1), informational ones skipped."""
    framing, at = _read_varint(data, 0)
    if framing != 1:
        raise ValueError(f"framing {framing}: only known-length responses are read here")
    while True:
        status, at = _read_varint(data, at)
        section, at = _read_bytes(data, at)
        if status >= 200:
            break
    headers, i = {}, 0
    while i < len(section):
        name, i = _read_bytes(section, i)
        value, i = _read_bytes(section, i)
        headers[name.decode().lower()] = value.decode()
    content, at = _read_bytes(data, at) if at < len(data) else (b"", at)
    return BinaryResponse(status, headers, content)


def first_key_config(keys: bytes) -> tuple[int, bytes]:
    """(key id, public key) of the first configuration of `application/ohttp-keys`
    offering X25519 / HKDF-SHA256 / AES-128-GCM."""
    at = 0
    while at < len(keys):
        (size,) = struct.unpack_from("!H", keys, at)
        config = keys[at + 2:at + 2 + size]
        at += 2 + size
        key_id, kem = config[0], struct.unpack_from("!H", config, 1)[0]
        if kem != KEM:
            continue
        public = config[3:35]
        (length,) = struct.unpack_from("!H", config, 35)
        suites = [struct.unpack_from("!HH", config, 37 + 4 * i) for i in range(length // 4)]
        if (KDF, AEAD) in suites:
            return key_id, public
    raise ValueError("no configuration offers the suite")


class Encapsulated:
    """One request sealed to (key id, public key), and the means to open its response."""

    def __init__(self, key_id: int, public_key: bytes, message: bytes, *,
                 ephemeral: bytes | None = None) -> None:
        sk = (X25519PrivateKey.from_private_bytes(ephemeral) if ephemeral
              else X25519PrivateKey.generate())
        self.enc = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        dh = sk.exchange(X25519PublicKey.from_public_bytes(public_key))
        kem_suite = b"KEM" + struct.pack("!H", KEM)
        eae_prk = _labeled_extract(kem_suite, b"", b"eae_prk", dh)
        shared = _labeled_expand(kem_suite, eae_prk, b"shared_secret",
                                 self.enc + public_key, 32)
        header = bytes([key_id]) + struct.pack("!HHH", KEM, KDF, AEAD)
        info = b"message/bhttp request\x00" + header
        suite = b"HPKE" + struct.pack("!HHH", KEM, KDF, AEAD)
        context = (b"\x00" + _labeled_extract(suite, b"", b"psk_id_hash", b"")
                   + _labeled_extract(suite, b"", b"info_hash", info))
        secret = _labeled_extract(suite, shared, b"secret", b"")
        key = _labeled_expand(suite, secret, b"key", context, NK)
        nonce = _labeled_expand(suite, secret, b"base_nonce", context, NN)
        self._exporter = _labeled_expand(suite, secret, b"exp", context, NH)
        self._suite = suite
        self.data = header + self.enc + AESGCM(key).encrypt(nonce, message, b"")

    def response_keys(self, response_nonce: bytes) -> tuple[bytes, bytes]:
        """RFC 9458 section 4.4: (aead_key, aead_nonce) of the response."""
        secret = _labeled_expand(self._suite, self._exporter, b"sec",
                                 b"message/bhttp response", RESPONSE_NONCE_SIZE)
        prk = _extract(self.enc + response_nonce, secret)
        return _expand(prk, b"key", NK), _expand(prk, b"nonce", NN)

    def open_response(self, data: bytes) -> bytes:
        """RFC 9458 section 4.4."""
        response_nonce, sealed = data[:RESPONSE_NONCE_SIZE], data[RESPONSE_NONCE_SIZE:]
        key, nonce = self.response_keys(response_nonce)
        return AESGCM(key).decrypt(nonce, sealed, b"")


def random_key_id(taken: int) -> int:
    """A key id the gateway does not have."""
    return (taken + 1 + os.urandom(1)[0] % 200) % 256


def key_schedule(kem_id: int, kdf_id: int, aead_id: int, shared_secret: bytes, info: bytes,
                 *, nk: int) -> tuple[bytes, bytes]:
    """RFC 9180 section 5.1, base mode, HKDF-SHA256: (key, base_nonce)."""
    suite = b"HPKE" + struct.pack("!HHH", kem_id, kdf_id, aead_id)
    context = (b"\x00" + _labeled_extract(suite, b"", b"psk_id_hash", b"")
               + _labeled_extract(suite, b"", b"info_hash", info))
    secret = _labeled_extract(suite, shared_secret, b"secret", b"")
    return (_labeled_expand(suite, secret, b"key", context, nk),
            _labeled_expand(suite, secret, b"base_nonce", context, NN))
