"""Server-sent events as OpenAI-style streams use them: `data: <payload>\\n\\n` per event,
ending with `data: [DONE]`. Sans-IO framing shared by the dialects that seal per event
(gateway side) and their clients (proxy side)."""

from __future__ import annotations

import json
from typing import Any

from enclave.errors import MessageTooLargeError

DONE = b"[DONE]"
_DATA = b"data: "
_END = b"\n\n"
# One event is one token's chunk or a usage record: 1 MiB is far beyond either.
MAX_EVENT_SIZE = 1 << 20


def event(payload: bytes) -> bytes:
    return _DATA + payload + _END


def data_of(chunk: bytes) -> list[bytes]:
    """The payloads of the `data:` events in `chunk` (whole events, as the engine sends)."""
    return [e[len(_DATA):] for e in chunk.split(_END) if e.startswith(_DATA)]


def usage_of(payload: bytes) -> dict[str, Any] | None:
    """The `usage` object of an OpenAI answer or stream event, if it has one; the one
    place usage is read (most stream events have none and are not parsed for it)."""
    if b'"usage"' not in payload:
        return None
    try:
        usage = json.loads(payload).get("usage")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return usage if isinstance(usage, dict) else None


class EventReader:
    """Events out of a byte stream that may split them anywhere; linear in the input
    (the search resumes where it stopped) and bounded (`MAX_EVENT_SIZE`)."""

    def __init__(self, *, max_event: int = MAX_EVENT_SIZE) -> None:
        self._buf = bytearray()
        self._searched = 0
        self._max = max_event

    @property
    def pending(self) -> bytes:
        """What has arrived of an event not yet complete."""
        return bytes(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        """Each completed `data:` event's payload (prefix removed; comments skipped)."""
        self._buf += data
        out: list[bytes] = []
        while True:
            end = self._buf.find(_END, max(0, self._searched - 1))
            if end < 0:
                self._searched = len(self._buf)
                if len(self._buf) > self._max:
                    raise MessageTooLargeError()
                return out
            if self._buf.startswith(_DATA):
                out.append(bytes(self._buf[len(_DATA):end]))
            del self._buf[:end + len(_END)]
            self._searched = 0
