"""Post-quantum secret exchange for Continuum: the inference secret sealed with HPKE over
the hybrid KEM ML-KEM-768 + X25519 (`cryptography`'s HPKE; Privatemode offers the same
for its secret exchange), next to the classic X25519 key configuration.

    public key   ML-KEM-768 public key (1184 bytes) || X25519 public key (32 bytes),
                 bound in the attestation report as `continuum-mlkem768x25519` and served
                 at `GET /v1/secrets/key` as {"kem": "MLKEM768-X25519", "public_key": hex}
    registration `POST /v1/secrets` {"kem": "MLKEM768-X25519", "ciphertext": hex}, the
                 ciphertext HPKE base-mode single-shot (enc || sealed secret), suite
                 MLKEM768_X25519 / HKDF-SHA256 / AES-128-GCM, info as the classic path

The hybrid holds as long as either part does: a recorded exchange stays sealed against a
future quantum computer (ML-KEM) and against a flaw in ML-KEM (X25519). Sans-IO.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.errors import DecryptError

KEM_NAME = "MLKEM768-X25519"
KEY_NAME = "continuum-mlkem768x25519"
MLKEM_PUBLIC_SIZE = 1184
_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)


class HybridKey:
    """The gateway's hybrid private key (made in the enclave, never exported)."""

    def __init__(self, *, mlkem_seed: bytes | None = None,
                 x25519_private: bytes | None = None) -> None:
        """Random, or from a fleet's secrets (a 64-byte ML-KEM seed, 32 X25519 bytes)."""
        self._mlkem = (mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed)
                       if mlkem_seed is not None else mlkem.MLKEM768PrivateKey.generate())
        self._x25519 = (x25519.X25519PrivateKey.from_private_bytes(x25519_private)
                        if x25519_private is not None else x25519.X25519PrivateKey.generate())
        self._key = hpke.MLKEM768X25519PrivateKey(self._mlkem, self._x25519)
        self.public_bytes = (
            self._mlkem.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            + self._x25519.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def __repr__(self) -> str:
        return "HybridKey([redacted])"

    def open(self, ciphertext: bytes, info: bytes) -> bytes:
        try:
            return _SUITE.decrypt(ciphertext, self._key, info=info)
        except Exception:  # noqa: BLE001 - opaque by design
            raise DecryptError() from None


def seal(public_bytes: bytes, plaintext: bytes, info: bytes) -> bytes:
    """Client side: `plaintext` sealed to the hybrid public key."""
    if len(public_bytes) != MLKEM_PUBLIC_SIZE + 32:
        raise ValueError("not an ML-KEM-768 + X25519 public key")
    public = hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(public_bytes[:MLKEM_PUBLIC_SIZE]),
        x25519.X25519PublicKey.from_public_bytes(public_bytes[MLKEM_PUBLIC_SIZE:]))
    return _SUITE.encrypt(plaintext, public, info=info)
