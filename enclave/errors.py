"""Errors of the enclave's crypto: opaque and uniform, with stable codes.

A decryption failure says nothing about which check failed (pyca's `InvalidTag`,
Fernet's bare `InvalidToken`): malformed framing, a bad tag, a truncated stream, a
reordered chunk all raise `DecryptError` with the same message, so that a client cannot
use the gateway as an oracle. An unknown or retired key is the one exception that gets
its own class, because it is not secret-dependent and the client must refetch keys.
Messages never include key material or plaintext.
"""

from __future__ import annotations

import enum


class CryptoCode(enum.StrEnum):
    DECRYPT_FAILED = "decryption_failed"
    UNKNOWN_KEY = "unknown_key"
    MESSAGE_TOO_LARGE = "message_too_large"


class EnclaveCryptoError(Exception):
    """Base class of every error raised by `enclave` crypto."""

    code: CryptoCode = CryptoCode.DECRYPT_FAILED
    message = "decryption failed"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class DecryptError(EnclaveCryptoError):
    """Any failure to open a message or a chunk. Deliberately uninformative."""

    code = CryptoCode.DECRYPT_FAILED
    message = "decryption failed"

    def __init__(self) -> None:
        super().__init__(self.message)


class UnknownKeyError(EnclaveCryptoError):
    """The key id (or its suite) is not one the gateway currently accepts: refetch keys."""

    code = CryptoCode.UNKNOWN_KEY
    message = "unknown or expired key configuration"

    def __init__(self) -> None:
        super().__init__(self.message)


class MessageTooLargeError(EnclaveCryptoError):
    """A declared or buffered size exceeds a limit (checked before buffering)."""

    code = CryptoCode.MESSAGE_TOO_LARGE
    message = "message exceeds the size limit"
