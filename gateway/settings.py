"""Gateway configuration, fixed at start."""

from __future__ import annotations

from dataclasses import dataclass

from enclave.keys import DEFAULT_GRACE_SECONDS, DEFAULT_ROTATION_SECONDS

# A 128k-token prompt is about 512 KiB of text; 4 MiB leaves room for JSON structure,
# long conversations and base64 overhead while keeping one request's buffer bounded.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    # Development only: serve the plaintext OpenAI routes. The default refuses plaintext
    # prompts; every production client speaks an encrypted dialect.
    insecure_plaintext: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    key_rotation_seconds: float = DEFAULT_ROTATION_SECONDS
    key_grace_seconds: float = DEFAULT_GRACE_SECONDS
