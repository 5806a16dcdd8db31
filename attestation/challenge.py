"""Liveness without a quote per client: the cached report plus a signature over the
client's challenge by a key that report attests.

A fresh-nonce report costs a hardware quote (a TDX quote takes up to seconds) and is
rate-limited per client. A client that only needs the current report asks for
`GET /v1/attestation/report?challenge=<64 hex>` instead: the gateway answers the report
it made for the current key epoch (its nonce is derived from the keys, `attestation.
binding`) and an Ed25519 signature over the client's challenge by the key the report
binds under `CHALLENGE_KEY`. The report proves which keys the TEE held when it was made;
the signature proves that whoever holds the attested key answered just now, to this
challenge. (Tinfoil and NEAR's private inference serve reports the same way.)

    signed   = "cloister-challenge-v1" || LP(challenge) || LP(SHA-256(document))
               || u64(signed_at)
    response = {"format": "cloister-challenge/1", "document": base64(evidence JSON),
                "challenge": hex, "signed_at": unix seconds, "signature": base64}
LP is a 4-byte big-endian length prefix. Sans-IO: bytes in, bytes out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from attestation.errors import Reason, VerificationError

FORMAT = "cloister-challenge/1"
TAG = b"cloister-challenge-v1"
CHALLENGE_KEY = "attestation-ed25519"
CHALLENGE_SIZE = 32


def _lp(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def _signed(challenge: bytes, document: bytes, signed_at: int) -> bytes:
    return (TAG + _lp(challenge) + _lp(hashlib.sha256(document).digest())
            + struct.pack("!Q", signed_at))


def answer(key: ed25519.Ed25519PrivateKey, challenge: bytes, document: bytes,
           signed_at: int) -> bytes:
    """The gateway's answer to `challenge` with the cached `document`."""
    if len(challenge) != CHALLENGE_SIZE:
        raise ValueError(f"a challenge is {CHALLENGE_SIZE} bytes")
    signature = key.sign(_signed(challenge, document, signed_at))
    return json.dumps({"format": FORMAT, "document": base64.b64encode(document).decode(),
                       "challenge": challenge.hex(), "signed_at": signed_at,
                       "signature": base64.b64encode(signature).decode()}).encode()


@dataclass(frozen=True)
class ChallengeAnswer:
    document: bytes
    challenge: bytes
    signed_at: int
    signature: bytes

    @classmethod
    def parse(cls, body: bytes) -> ChallengeAnswer:
        try:
            raw = json.loads(body)
            if raw["format"] != FORMAT:
                raise VerificationError(Reason.UNSUPPORTED, f"challenge format {raw['format']!r}")
            return cls(base64.b64decode(raw["document"], validate=True),
                       bytes.fromhex(raw["challenge"]), int(raw["signed_at"]),
                       base64.b64decode(raw["signature"], validate=True))
        except VerificationError:
            raise
        except (ValueError, KeyError, TypeError):
            raise VerificationError(Reason.MALFORMED, "malformed challenge answer") from None

    def check(self, challenge: bytes, public_key: bytes) -> None:
        """The answer is to `challenge` and signed by the attested `public_key`."""
        if self.challenge != challenge:
            raise VerificationError(Reason.NONCE_MISMATCH, "the answer is to another challenge")
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
            key.verify(self.signature, _signed(challenge, self.document, self.signed_at))
        except (ValueError, InvalidSignature):
            raise VerificationError(Reason.NONCE_SIGNATURE, "the challenge is not signed by "
                                    "the attested key") from None
