"""Gateway configuration, fixed at start."""

from __future__ import annotations

from dataclasses import dataclass, field

from enclave.keys import DEFAULT_GRACE_SECONDS, DEFAULT_ROTATION_SECONDS
from enclave.padding import PaddingPolicy
from enclave.replay import DEFAULT_MAX_ENTRIES, DEFAULT_WINDOW_SECONDS

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
    # Concurrency: requests being served at once, gateway-wide and per client address,
    # and the engine queue depth past which new work is refused (503, Retry-After).
    max_in_flight: int = 256
    max_per_client: int = 64
    max_engine_queue: int = 512
    # A client must deliver its whole body within this many seconds (slow-body attacks).
    body_timeout_seconds: float = 30.0
    # A stream whose reader stops reading is given up after this many seconds without a
    # write going through: its engine request is aborted and its admission slot freed.
    write_timeout_seconds: float = 20.0
    # A connection must deliver a complete request head this soon (slowloris).
    head_timeout_seconds: float = 10.0
    # Continuum secrets one client may hold at once, and how fast it may register them.
    secrets_per_client: int = 64
    secret_registrations_per_second: float = 2.0
    secret_registration_burst: int = 20
    # Output tokens a request may ask for; None leaves it to the model's context length.
    max_tokens: int | None = None
    # Side channels (enclave.padding, gateway.coalesce): every sealed plaintext padded to
    # a size bucket; streamed tokens sent together every interval (0: as they come), or
    # one padded chunk every interval whether or not a token is ready (constant rate).
    padding: PaddingPolicy = field(default_factory=PaddingPolicy)
    stream_interval_ms: float = 50.0
    constant_rate: bool = False
    # Replays (enclave.replay): the client clock window and the record store's size.
    replay_window_seconds: float = DEFAULT_WINDOW_SECONDS
    replay_cache_entries: int = DEFAULT_MAX_ENTRIES
    # /metrics is not on the public listener, unless a scraper presents this bearer
    # token there (otherwise: the metrics listener, `--metrics-port`, on loopback).
    metrics_token: str | None = None
