"""The Continuum encrypted-field dialect (seeds 000/001; crypto per DESIGN section 4).

The client registers a 32-byte inference secret sealed to the attested HPKE key
(`POST /v1/secrets`, single-shot HPKE base mode, X25519 / HKDF-SHA256 / AES-256-GCM,
info "cloister-continuum-secret-v1") and receives a `secret_id`. Request fields it
chooses to seal (at least `messages`, `prompt` or `input`) and the response's `choices`
(or `data`) are strings

    "<secret_id hex>:<request nonce hex, 16 bytes>:<iv hex, 12 bytes>:<ciphertext hex>"

AES-256-GCM under keys derived per request:
    key_dir = HKDF-SHA256(salt=request_nonce, ikm=secret, info="cloister-continuum-v1 " dir)
    aad     = "cloister-continuum-v1" || dir || u64 seq || u8 final || field name
Request fields use seq 0, final 1. Response messages count seq from 0; the last one of a
stream (and the only one of a whole response) carries final 1, so a client detects a
truncated, reordered or spliced stream. Unlike the upstream Privatemode scheme, nothing
is reused across directions or messages.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import enclave.continuum.pq as pq
from enclave.errors import DecryptError, UnknownKeyError, UnknownSecretError
from enclave.keys import KeyRing
from enclave.ohttp.keyconfig import KeyConfig
from enclave.ohttp.protocol import Aead, Kdf, SymmetricSuite
from enclave.ohttp.suites import hkdf_expand, hkdf_extract, hpke_suite

SECRET_SIZE = 32
SECRET_ID_SIZE = 16
REQUEST_NONCE_SIZE = 16
IV_SIZE = 12
SECRET_INFO = b"cloister-continuum-secret-v1"
LABEL = b"cloister-continuum-v1"
SUITE = SymmetricSuite(Kdf.HKDF_SHA256, Aead.AES_256_GCM)
FIELD_PATTERN = re.compile(
    r"^([0-9a-f]{32}):([0-9a-f]{32}):([0-9a-f]{24}):((?:[0-9a-f]{2})+)$")
# Secrets held at once and for how long: bounded memory whatever clients do.
MAX_SECRETS = 100_000
# Secrets one client may hold at once (a proxy needs one per gateway and key epoch).
MAX_SECRETS_PER_OWNER = 64
SECRET_TTL_SECONDS = 3600
# The request fields that carry the prompt, by route.
PROMPT_FIELDS = {"/v1/chat/completions": "messages", "/v1/completions": "prompt",
                 "/v1/embeddings": "input"}
RESULT_FIELDS = {"/v1/chat/completions": "choices", "/v1/completions": "choices",
                 "/v1/embeddings": "data"}


def is_encrypted_field(value: object) -> bool:
    return isinstance(value, str) and FIELD_PATTERN.match(value) is not None


# --- secrets ------------------------------------------------------------------------------

def seal_secret(config: KeyConfig, secret: bytes) -> dict[str, object]:
    """Client side: the body of `POST /v1/secrets`."""
    if len(secret) != SECRET_SIZE:
        raise ValueError(f"expected a {SECRET_SIZE}-byte secret, got {len(secret)}")
    hpke = hpke_suite(SUITE)
    # Single-shot HPKE (RFC 9180 section 6.1): SetupBaseS, then one Seal.
    enc, context = hpke.create_sender_context(hpke.kem.deserialize_public_key(config.public_key),
                                              SECRET_INFO)
    ciphertext = context.seal(secret, b"")
    return {"key_id": config.key_id, "encapsulated_key": bytes(enc).hex(),
            "ciphertext": bytes(ciphertext).hex()}


def seal_secret_hybrid(public_key: bytes, secret: bytes) -> dict[str, object]:
    """Client side: the body of `POST /v1/secrets` sealed with ML-KEM-768 + X25519."""
    if len(secret) != SECRET_SIZE:
        raise ValueError(f"expected a {SECRET_SIZE}-byte secret, got {len(secret)}")
    return {"kem": pq.KEM_NAME, "ciphertext": pq.seal(public_key, secret, SECRET_INFO).hex()}


def open_secret(keyring: KeyRing, payload: object, hybrid: pq.HybridKey | None = None
                ) -> bytes:
    """Server side: the 32-byte secret inside a `POST /v1/secrets` body (sealed to the
    classic key configuration, or with `"kem": "MLKEM768-X25519"` to `hybrid`)."""
    if not isinstance(payload, dict):
        raise DecryptError()
    if "kem" in payload:
        if payload["kem"] != pq.KEM_NAME or hybrid is None:
            raise UnknownKeyError()
        try:
            secret = hybrid.open(bytes.fromhex(str(payload["ciphertext"])), SECRET_INFO)
        except (KeyError, ValueError):
            raise DecryptError() from None
        if len(secret) != SECRET_SIZE:
            raise DecryptError()
        return secret
    key_id = payload.get("key_id")
    key = keyring.lookup(key_id) if isinstance(key_id, int) else None
    if key is None:
        raise UnknownKeyError()
    try:
        enc = bytes.fromhex(payload["encapsulated_key"])
        ciphertext = bytes.fromhex(payload["ciphertext"])
        context = hpke_suite(SUITE).create_recipient_context(enc, key.private_key, SECRET_INFO)
        secret = context.open(ciphertext, b"")
    except Exception:  # noqa: BLE001 - opaque by design
        raise DecryptError() from None
    if len(secret) != SECRET_SIZE:
        raise DecryptError()
    return bytes(secret)


@dataclass(frozen=True, repr=False)
class _Held:
    secret: bytes
    expires_at: float
    owner: str


class SecretStore:
    """Inference secrets by id, in enclave memory only, each with its owner (the client
    that registered it: its address). An owner holds at most `per_owner`: past that its
    own oldest goes, so one client registering without end evicts only its own secrets.
    Past `max_secrets` in all (that many clients), the oldest secret goes, whoever owns it
    (a client told `unknown_secret` registers again)."""

    def __init__(self, *, ttl: float = SECRET_TTL_SECONDS, max_secrets: int = MAX_SECRETS,
                 per_owner: int = MAX_SECRETS_PER_OWNER,
                 clock: Callable[[], float] = time.time) -> None:
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._owned: dict[str, OrderedDict[str, None]] = {}
        self._ttl, self._max, self._per_owner, self._clock = (ttl, max_secrets, per_owner,
                                                              clock)

    def __repr__(self) -> str:
        return f"SecretStore({len(self._held)} secrets, [redacted])"

    def __len__(self) -> int:
        return len(self._held)

    def register(self, secret: bytes, owner: str = "") -> tuple[str, int]:
        self._expire()
        secret_id = os.urandom(SECRET_ID_SIZE).hex()
        expires = self._clock() + self._ttl
        self._held[secret_id] = _Held(secret, expires, owner)
        owned = self._owned.setdefault(owner, OrderedDict())
        owned[secret_id] = None
        while len(owned) > self._per_owner:
            self._forget(next(iter(owned)))
        while len(self._held) > self._max:
            self._forget(next(iter(self._held)))
        return secret_id, int(expires)

    def _forget(self, secret_id: str) -> None:
        held = self._held.pop(secret_id, None)
        if held is None:
            return
        owned = self._owned.get(held.owner)
        if owned is not None:
            owned.pop(secret_id, None)
            if not owned:
                del self._owned[held.owner]

    def _expire(self) -> None:
        """Drop expired secrets (they were registered in order, with one lifetime)."""
        now = self._clock()
        while self._held:
            oldest, held = next(iter(self._held.items()))
            if held.expires_at > now:
                return
            self._forget(oldest)

    def clear(self) -> None:
        """Forget every secret (clients register new ones when told `unknown_secret`)."""
        self._held.clear()
        self._owned.clear()

    def get(self, secret_id: str) -> bytes:
        held = self._held.get(secret_id)
        if held is None or held.expires_at <= self._clock():
            self._forget(secret_id)
            raise UnknownSecretError()
        return held.secret


# --- fields -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SealedField:
    secret_id: str
    request_nonce: bytes
    iv: bytes
    ciphertext: bytes

    @classmethod
    def parse(cls, value: object) -> SealedField:
        match = FIELD_PATTERN.match(value) if isinstance(value, str) else None
        if match is None:
            raise DecryptError()
        return cls(match[1], bytes.fromhex(match[2]), bytes.fromhex(match[3]),
                   bytes.fromhex(match[4]))

    def __str__(self) -> str:
        return ":".join((self.secret_id, self.request_nonce.hex(), self.iv.hex(),
                         self.ciphertext.hex()))


def _aad(direction: bytes, seq: int, final: bool, field: str) -> bytes:
    return LABEL + direction + struct.pack(">QB", seq, final) + field.encode()


class FieldCipher:
    """Both directions of one request's fields, from the secret and the request nonce."""

    def __init__(self, secret_id: str, secret: bytes, request_nonce: bytes) -> None:
        if len(request_nonce) != REQUEST_NONCE_SIZE:
            raise DecryptError()
        prk = hkdf_extract(request_nonce, secret)
        self._request = AESGCM(hkdf_expand(prk, LABEL + b" request", 32))
        self._response = AESGCM(hkdf_expand(prk, LABEL + b" response", 32))
        self.secret_id, self.request_nonce = secret_id, request_nonce

    @classmethod
    def for_client(cls, secret_id: str, secret: bytes) -> FieldCipher:
        return cls(secret_id, secret, os.urandom(REQUEST_NONCE_SIZE))

    def _seal(self, aead: AESGCM, plaintext: bytes, aad: bytes) -> str:
        iv = os.urandom(IV_SIZE)
        return str(SealedField(self.secret_id, self.request_nonce, iv,
                               aead.encrypt(iv, plaintext, aad)))

    def _open(self, aead: AESGCM, value: object, aad: bytes) -> bytes:
        if not isinstance(value, str):
            raise DecryptError()
        field = SealedField.parse(value)
        if field.secret_id != self.secret_id or field.request_nonce != self.request_nonce:
            raise DecryptError()
        try:
            return aead.decrypt(field.iv, field.ciphertext, aad)
        except Exception:  # noqa: BLE001
            raise DecryptError() from None

    def seal_request_field(self, name: str, plaintext: bytes) -> str:
        return self._seal(self._request, plaintext, _aad(b"request", 0, True, name))

    def open_request_field(self, name: str, value: object) -> bytes:
        return self._open(self._request, value, _aad(b"request", 0, True, name))

    def seal_response(self, name: str, seq: int, plaintext: bytes, *, final: bool) -> str:
        return self._seal(self._response, plaintext, _aad(b"response", seq, final, name))

    def open_response(self, name: str, seq: int, value: object, *, final: bool) -> bytes:
        return self._open(self._response, value, _aad(b"response", seq, final, name))
