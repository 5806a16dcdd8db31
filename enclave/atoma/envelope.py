"""The Atoma confidential envelope (seeds 003/004, DESIGN section 4): sans-IO, both sides.

Request  {ciphertext, client_dh_public_key, node_dh_public_key, model_name, nonce,
          plaintext_body_hash, salt, stack_small_id, num_compute_units?, stream}
         (binary fields standard base64; nonce 12 bytes, salt 16, keys 32)
    key = HKDF-SHA256(salt=salt, ikm=X25519(node_sk, client_pk), info="")
    ciphertext = AES-256-GCM(key, nonce, plaintext, aad=none)
    plaintext_body_hash = BLAKE2b-256(plaintext)
Response {ciphertext, nonce, response_hash, signature, usage}
    response_hash = BLAKE2b-256(plaintext response)
    signature = base64(0x00 || Ed25519(signing_key, response_hash) || signing_pk)  (Sui)
Streams are SSE events of that object, one per chunk, then `data: [DONE]`. Upstream Atoma
reuses one nonce for every chunk of a stream; every chunk carries its own `nonce`, so we
always draw a fresh one (wire-compatible, no AES-GCM nonce reuse). Stream framing and
the dialect's two sides: `enclave.atoma.dialect`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from enclave.errors import DecryptError, MalformedRequest, UnknownKeyError
from enclave.keys import KeyRing
from enclave.ohttp.suites import hkdf_expand, hkdf_extract

NONCE_SIZE = 12
SALT_SIZE = 16
KEY_SIZE = 32
SUI_ED25519_FLAG = b"\x00"
REQUEST_FIELDS = ("ciphertext", "client_dh_public_key", "node_dh_public_key", "model_name",
                  "nonce", "plaintext_body_hash", "salt", "stack_small_id")


class InvalidBody(MalformedRequest):
    """Atoma's `InvalidBody`: the envelope is malformed or does not open."""


class StaleNodeKey(UnknownKeyError):
    """The envelope names a node key the gateway no longer honours: refetch it."""

    message = "the node public key is not current: fetch /v1/confidential/node"


# The message for every failure to open: no detail about which check failed.
OPEN_FAILED = "the confidential request could not be decrypted"


def blake2b_256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def derive_key(shared_secret: bytes, salt: bytes) -> bytes:
    """HKDF-SHA256(salt, ikm=shared_secret, info="") to 32 bytes."""
    return hkdf_expand(hkdf_extract(salt, shared_secret), b"", KEY_SIZE)


def decode_b64_field(payload: dict[str, Any], name: str, size: int | None) -> bytes:
    value = payload.get(name)
    if not isinstance(value, str):
        raise InvalidBody(f"`{name}` must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBody(f"`{name}` is not valid base64") from None
    if size is not None and len(raw) != size:
        raise InvalidBody(f"`{name}` must be {size} bytes, got {len(raw)}")
    return raw


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class ConfidentialRequest:
    ciphertext: bytes
    client_dh_public_key: bytes
    node_dh_public_key: bytes
    model_name: str
    nonce: bytes
    plaintext_body_hash: bytes
    salt: bytes
    stack_small_id: int
    num_compute_units: int | None
    stream: bool

    @classmethod
    def parse(cls, payload: Any) -> ConfidentialRequest:
        if not isinstance(payload, dict):
            raise InvalidBody("the body must be a JSON object")
        missing = [f for f in REQUEST_FIELDS if f not in payload]
        if missing:
            raise InvalidBody(f"missing field `{missing[0]}`")
        stream = payload.get("stream")
        if not isinstance(stream, bool):
            raise InvalidBody("`stream` is missing or not a boolean")
        units = payload.get("num_compute_units")
        small_id = payload["stack_small_id"]
        if not isinstance(small_id, int) or isinstance(small_id, bool) or small_id <= 0:
            raise InvalidBody("`stack_small_id` must be a positive integer")
        if units is not None and (not isinstance(units, int) or isinstance(units, bool)
                                  or units <= 0):
            raise InvalidBody("`num_compute_units` must be a positive integer")
        if not isinstance(payload["model_name"], str):
            raise InvalidBody("`model_name` must be a string")
        return cls(
            ciphertext=decode_b64_field(payload, "ciphertext", None),
            client_dh_public_key=canonical_x25519(
                decode_b64_field(payload, "client_dh_public_key", KEY_SIZE)),
            node_dh_public_key=decode_b64_field(payload, "node_dh_public_key", KEY_SIZE),
            model_name=payload["model_name"],
            nonce=decode_b64_field(payload, "nonce", NONCE_SIZE),
            plaintext_body_hash=decode_b64_field(payload, "plaintext_body_hash", 32),
            salt=decode_b64_field(payload, "salt", SALT_SIZE), stack_small_id=small_id,
            num_compute_units=units, stream=stream)


X25519_P = 2**255 - 19


def canonical_x25519(key: bytes) -> bytes:
    """The one spelling of an X25519 public key (RFC 7748 section 5: bit 255 is ignored, and
    values from p up name the same point as value - p): with it cleared and a non-canonical
    value refused, a captured request cannot be made new by re-spelling its key (the key is
    part of the replay id)."""
    value = int.from_bytes(key, "little") & ~(1 << 255)
    if value >= X25519_P:
        raise InvalidBody("`client_dh_public_key` is not a canonical X25519 key")
    return value.to_bytes(KEY_SIZE, "little")


class NodeSigner:
    """The node's Ed25519 signing key (pynacl), generated in the enclave at start."""

    def __init__(self, key: SigningKey | None = None) -> None:
        self._key = key or SigningKey.generate()
        self.public_key = bytes(self._key.verify_key)

    def __repr__(self) -> str:
        return "NodeSigner(signing_key=[redacted])"

    def sui_signature(self, message: bytes) -> str:
        signature = self._key.sign(message).signature
        return b64(SUI_ED25519_FLAG + signature + self.public_key)


class EnvelopeSealer:
    """Seals each response (or stream chunk) under the request's key, fresh nonce each."""

    def __init__(self, key: bytes, signer: NodeSigner) -> None:
        self._aead = AESGCM(key)
        self._signer = signer

    def seal(self, plaintext: bytes, *, usage: Any = None) -> dict[str, Any]:
        nonce = os.urandom(NONCE_SIZE)
        digest = blake2b_256(plaintext)
        return {"ciphertext": b64(self._aead.encrypt(nonce, plaintext, None)), "nonce": b64(nonce),
                "response_hash": b64(digest), "signature": self._signer.sui_signature(digest),
                "usage": usage}


def open_request(request: ConfidentialRequest, keyring: KeyRing, signer: NodeSigner
                 ) -> tuple[bytes, EnvelopeSealer]:
    """Server side: the plaintext and the sealer for its answer."""
    node = next((k for k in keyring.honoured_keys()
                 if k.public_key == request.node_dh_public_key), None)
    if node is None:
        raise StaleNodeKey()
    try:
        key = derive_key(node.exchange(request.client_dh_public_key), request.salt)
        plaintext = AESGCM(key).decrypt(request.nonce, request.ciphertext, None)
    except Exception:  # noqa: BLE001 - one message for every failure to open
        raise InvalidBody(OPEN_FAILED) from None
    if blake2b_256(plaintext) != request.plaintext_body_hash:
        raise InvalidBody("`plaintext_body_hash` does not match the decrypted body")
    return plaintext, EnvelopeSealer(key, signer)


class ClientSession:
    """Client side: seals one request to the node and opens what comes back."""

    def __init__(self, node_dh_public_key: bytes, node_signing_public_key: bytes) -> None:
        self._node_pk = node_dh_public_key
        self._signing_pk = node_signing_public_key
        self._private = X25519PrivateKey.generate()
        self._salt = os.urandom(SALT_SIZE)
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(node_dh_public_key))
        self._aead = AESGCM(derive_key(shared, self._salt))

    def seal_request(self, plaintext: bytes, *, model_name: str, stream: bool,
                     stack_small_id: int = 1) -> dict[str, Any]:
        nonce = os.urandom(NONCE_SIZE)
        return {
            "ciphertext": b64(self._aead.encrypt(nonce, plaintext, None)),
            "client_dh_public_key": b64(self._private.public_key().public_bytes_raw()),
            "node_dh_public_key": b64(self._node_pk), "model_name": model_name,
            "nonce": b64(nonce), "plaintext_body_hash": b64(blake2b_256(plaintext)),
            "salt": b64(self._salt), "stack_small_id": stack_small_id, "stream": stream,
        }

    def open_response(self, payload: Any) -> bytes:
        """Decrypt, check the hash and the node's Sui signature; `DecryptError` if not."""
        try:
            nonce = base64.b64decode(payload["nonce"], validate=True)
            plaintext = self._aead.decrypt(nonce, base64.b64decode(payload["ciphertext"],
                                                                   validate=True), None)
            digest = base64.b64decode(payload["response_hash"], validate=True)
            signature = base64.b64decode(payload["signature"], validate=True)
        except Exception:  # noqa: BLE001
            raise DecryptError() from None
        if blake2b_256(plaintext) != digest or len(signature) != 97:
            raise DecryptError()
        if signature[:1] != SUI_ED25519_FLAG or signature[65:] != self._signing_pk:
            raise DecryptError()
        try:
            VerifyKey(self._signing_pk).verify(digest, signature[1:65])
        except BadSignatureError:
            raise DecryptError() from None
        return plaintext

