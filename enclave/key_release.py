"""Releasing the fleet seed to an attested replica: the sealing and the signature. Sans-IO.

The replica (`proxy.join`) makes an ephemeral X25519 key, binds its public half into
its evidence under `RECIPIENT_KEY` (with the keyholder's single-use challenge as the
nonce), and the keyholder (`gateway.keyholder`), once the evidence verifies against the
reference values, answers

    sealed    = HPKE base mode, single shot (X25519, HKDF-SHA256, AES-256-GCM) of the
                seed to the recipient key, info = "cloister-fleet-seed-v1" || challenge
    signature = Ed25519 by the keyholder's attested `SIGNING_KEY` over
                "cloister-fleet-release-v1" || challenge || SHA-256(sealed)
so only the attested replica can open the seed, and only from the attested keyholder.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

RECIPIENT_KEY = "fleet-release-x25519"
SIGNING_KEY = "keyholder-signing-ed25519"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_INFO = b"cloister-fleet-seed-v1"
_SIGNED = b"cloister-fleet-release-v1"


class ReleaseRefused(Exception):
    """The release did not come from the attested keyholder, or does not open."""


def seal(seed: bytes, recipient: bytes, challenge: bytes, signer: ed25519.Ed25519PrivateKey
         ) -> tuple[bytes, bytes]:
    """Keyholder side: (sealed seed, signature)."""
    sealed = _SUITE.encrypt(seed, x25519.X25519PublicKey.from_public_bytes(recipient),
                            info=_INFO + challenge)
    return sealed, signer.sign(_SIGNED + challenge + hashlib.sha256(sealed).digest())


def open_sealed(sealed: bytes, signature: bytes, challenge: bytes,
                recipient: x25519.X25519PrivateKey, keyholder: bytes) -> bytes:
    """Replica side: the seed, if the attested keyholder sealed it to us for this
    challenge; `ReleaseRefused` otherwise."""
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(keyholder).verify(
            signature, _SIGNED + challenge + hashlib.sha256(sealed).digest())
        return _SUITE.decrypt(sealed, recipient, info=_INFO + challenge)
    except (InvalidSignature, ValueError) as exc:
        raise ReleaseRefused("the seed is not the attested keyholder's, or not ours") from exc
