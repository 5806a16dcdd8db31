"""Gateway configuration, fixed at start."""

from __future__ import annotations

from dataclasses import dataclass

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
