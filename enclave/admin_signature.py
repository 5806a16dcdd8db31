"""Signed administration requests: the operator's admin key signs each request, the
gateway checks it against the key pinned in its workload manifest. Sans-IO, shared by
the gateway (`gateway.admin`) and its client (`cloister admin`).

    signed   = "cloister-admin-v1" \\n METHOD \\n PATH?QUERY \\n TIME \\n hex(SHA-256(body))
    headers  X-Cloister-Admin-Time: TIME (Unix seconds)
             X-Cloister-Admin-Signature: base64(Ed25519(signed))
A request more than `WINDOW_SECONDS` from the gateway's clock is refused, and so is one
whose signature was seen within the window (a replay).
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

TIME_HEADER = "x-cloister-admin-time"
SIGNATURE_HEADER = "x-cloister-admin-signature"
WINDOW_SECONDS = 60


def _signed(method: str, target: str, stamp: int, body: bytes) -> bytes:
    return "\n".join(("cloister-admin-v1", method.upper(), target, str(stamp),
                      hashlib.sha256(body).hexdigest())).encode()


def sign(key: ed25519.Ed25519PrivateKey, method: str, target: str, body: bytes,
         stamp: int) -> dict[str, str]:
    """The headers that authenticate this request (`target`: path and query)."""
    signature = key.sign(_signed(method, target, stamp, body))
    return {TIME_HEADER: str(stamp), SIGNATURE_HEADER: base64.b64encode(signature).decode()}


class BadAdminSignature(Exception):
    pass


def verify(public: ed25519.Ed25519PublicKey, method: str, target: str, body: bytes,
           headers: dict[str, str], *, now: float) -> bytes:
    """The signature, if it is good and timely (the caller refuses replays of it)."""
    try:
        stamp = int(headers[TIME_HEADER])
        signature = base64.b64decode(headers[SIGNATURE_HEADER], validate=True)
    except (KeyError, ValueError):
        raise BadAdminSignature("missing or malformed admin signature headers") from None
    if abs(now - stamp) > WINDOW_SECONDS:
        raise BadAdminSignature("the admin request is not timely: check the clock")
    try:
        public.verify(signature, _signed(method, target, stamp, body))
    except InvalidSignature:
        raise BadAdminSignature("the admin signature does not verify") from None
    return signature


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    """What the workload manifest pins: the SHA-256 of the raw public key, hex."""
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()
