"""What dialects that seal each SSE event on its own (Atoma, Continuum) share, both
sides: events in order, an authenticated end before `data: [DONE]`, nothing after.

Server: `SealedEventsResponder.chunk` splits the engine's events, seals each with
`_seal_event(payload, final=False)` and, at the engine's `[DONE]`, adds the dialect's
authenticated end (`_seal_event` of an empty chunk object that keeps the stream's id,
object, created and model, with `final=True`). Client: a dialect supplies
`_open_event(payload)`, which opens one sealed event at the current position and says
whether it is the end; `SealedEventsOpener` reassembles events from the byte stream and
refuses data after the end or after `[DONE]`, and a stream cut short. A receipt
(`enclave.receipts`) rides in the authenticated end; each side keeps here the running
digest of what it sealed or opened before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

from enclave import sse
from enclave.dialect import Headers, InnerHead, OuterResponse, StreamStart, json_response
from enclave.errors import RequestRefused, UnauthenticatedAnswer
from enclave.http_fields import media_type
from enclave.padding import OFF, PaddingPolicy
from enclave.receipts import PendingReceipt, Receipts

EVENT_STREAM = "text/event-stream"
# Kept from the last engine event in the end chunk, so that it is a well-formed chunk.
KEPT_ON_END = ("id", "object", "created", "model")


class SealedEventsResponder:
    """Subclasses pad what they seal with `self.padding.pad_json` (the opened plaintext is
    JSON) and their outer JSON with `_outer`; each sealed event is padded here."""

    streams = True

    def __init__(self) -> None:
        self._last = b"{}"
        self.padding = OFF
        self._receipt: PendingReceipt | None = None
        self._content = hashlib.sha256()  # what the client opens, for the receipt

    def sign_with(self, receipt: PendingReceipt) -> None:
        self._receipt = receipt

    def padded(self, policy: PaddingPolicy) -> SealedEventsResponder:
        self.padding = policy
        return self

    def _outer(self, status: int, body: bytes) -> OuterResponse:
        return json_response(status, self.padding.pad_json(body))

    def _seal_event(self, payload: bytes, *, final: bool) -> bytes:
        """One sealed event (`data: ...\n\n`) for the engine's event `payload`."""
        raise NotImplementedError

    def start(self, status: int, content_type: str) -> StreamStart:
        return StreamStart(200, (("content-type", EVENT_STREAM),))

    def chunk(self, events: bytes) -> bytes:
        out = []
        for data in sse.data_of(events):
            if data == sse.DONE:
                end = json.dumps({**self._kept(), "choices": []}).encode()
                out.append(self._seal_event(end, final=True))
                out.append(sse.event(sse.DONE))
                continue
            self._last = data  # parsed once, at the end, not per event
            out.append(self._seal_event(data, final=False))
        return self.padding.pad_events(b"".join(out))

    def _kept(self) -> dict[str, Any]:
        """What the end chunk keeps of the engine's last event."""
        with contextlib.suppress(ValueError, AttributeError, UnicodeDecodeError):
            return {k: v for k, v in json.loads(self._last).items() if k in KEPT_ON_END}
        return {}

    def end(self) -> bytes:
        return b""


class SealedEventsOpener:
    """`sent`: the sealed request, for its answer's receipt, which `receipts` checks."""

    def __init__(self, sent: bytes, receipts: Receipts) -> None:
        self._sent, self._receipts = sent, receipts
        self._content = hashlib.sha256()  # what was opened, for the receipt
        self._reader = sse.EventReader()
        self._head: InnerHead | None = InnerHead(200, EVENT_STREAM)
        self._ended = False
        self._done = False

    def _open_event(self, payload: bytes) -> tuple[bytes | None, bool]:
        """(the opened event to pass on, or None; whether it is the authenticated end)."""
        raise NotImplementedError

    def begin(self, status: int, headers: Headers) -> bool:
        return status == 200 and media_type(headers) == EVENT_STREAM

    def push(self, data: bytes) -> list[InnerHead | bytes]:
        out: list[InnerHead | bytes] = []
        if self._head is not None:
            out.append(self._head)
            self._head = None
        try:
            payloads = self._reader.push(data)
        except RequestRefused as exc:
            raise UnauthenticatedAnswer("an event of the stream is too large") from exc
        for payload in payloads:
            event = self._event(payload)
            if event is not None:
                out.append(event)
        return out

    def _event(self, payload: bytes) -> bytes | None:
        if self._done:
            raise UnauthenticatedAnswer("the stream goes on after [DONE]")
        if payload == sse.DONE:
            if not self._ended:
                raise UnauthenticatedAnswer("the stream is truncated (no authenticated end)")
            self._done = True
            return sse.event(sse.DONE)
        if self._ended:
            raise UnauthenticatedAnswer("the stream goes on after its authenticated end")
        event, self._ended = self._open_event(payload)
        return event

    def finish(self) -> list[InnerHead | bytes]:
        out = self.push(b"")
        if not self._done:
            raise UnauthenticatedAnswer("the stream is truncated (no authenticated end)")
        return out
