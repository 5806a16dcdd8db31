"""The routing hint (issue 32): lets a balancer the operator already runs send one user's
requests that share a prompt prefix to the same replica, where vLLM's prefix cache holds
it, without the balancer seeing the prompt.

A client computes `HMAC-SHA256(k_user, what the cache can hold)` and sends its first 16
bytes, base64url, in the clear header `Cloister-Route-Hint`, beside the ciphertext.
`k_user` is derived from the user's own secret (their platform API key, or a secret the
client keeps), so different users never share a hint and the operator cannot compute one.
What the cache can hold is the request's prefix: the canonical (JCS, RFC 8785) form of
every message but the last (the one just typed is new; with a single message, that
message), or of the completion's prompt, its first 1 KiB, with the path and the model.
What it reveals: the operator can link one user's requests whose prefixes are equal (the
same conversation, the same system prompt), nothing about their content, and nothing
across users. The gateway never reads it; a malformed one only costs the balancer its
affinity.

Sans-IO: a request's bytes in, a header out. Hand-written: a few lines over HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HEADER = "cloister-route-hint"
PREFIX_BYTES = 1024
HINT_BYTES = 16
WELL_FORMED = re.compile(r"^[A-Za-z0-9_-]{22}$")  # what a balancer may check
_CONTEXT = b"cloister-route-hint-v1\x00"


def user_key(secret: bytes) -> bytes:
    """`k_user` from the user's own secret (their API key's bytes, or a kept secret)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"cloister route hint key v1").derive(secret)


def cacheable_prefix(path: str, body: bytes) -> bytes | None:
    """The bytes the hint is computed over, or None where no prefix cache applies (not
    JSON, no prompt)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    prompt: Any
    messages = payload.get("messages")
    if isinstance(messages, list) and messages:
        prompt = messages[:-1] if len(messages) > 1 else messages
    elif "prompt" in payload:
        prompt = payload["prompt"]
    else:
        return None
    try:
        canonical = rfc8785.dumps(prompt)
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        return None
    model = payload.get("model")
    head = f"{path}\x00{model if isinstance(model, str) else ''}\x00".encode()
    return head + canonical[:PREFIX_BYTES]


class RouteHint:
    """One user's hints."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a route hint key is 32 bytes (user_key)")
        self._key = key

    def hint(self, path: str, body: bytes) -> str | None:
        """The header's value for this request, or None to send none."""
        prefix = cacheable_prefix(path, body)
        if prefix is None:
            return None
        mac = hmac.new(self._key, _CONTEXT + prefix, hashlib.sha256).digest()[:HINT_BYTES]
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def header(self, path: str, body: bytes) -> tuple[tuple[str, str], ...]:
        value = self.hint(path, body)
        return () if value is None else ((HEADER, value),)
