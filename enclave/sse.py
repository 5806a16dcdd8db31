"""Server-sent events as OpenAI-style streams use them: `data: <payload>\\n\\n` per event,
ending with `data: [DONE]`. Sans-IO framing shared by the dialects that seal per event
(gateway side) and their clients (proxy side)."""

from __future__ import annotations

DONE = b"[DONE]"
_DATA = b"data: "
_END = b"\n\n"


def event(payload: bytes) -> bytes:
    return _DATA + payload + _END


def data_of(chunk: bytes) -> list[bytes]:
    """The payloads of the `data:` events in `chunk` (whole events, as the engine sends)."""
    return [e[len(_DATA):] for e in chunk.split(_END) if e.startswith(_DATA)]


class EventReader:
    """Events out of a byte stream that may split them anywhere."""

    def __init__(self) -> None:
        self.pending = b""

    def push(self, data: bytes) -> list[bytes]:
        """Each completed event's payload (its `data: ` prefix removed)."""
        *events, self.pending = (self.pending + data).split(_END)
        return [e.removeprefix(_DATA) for e in events]
