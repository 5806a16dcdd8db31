"""Padding inside the encryption, so the sizes on the wire say little about the text.

Sealed answers leak their length: a whole answer grows with its token count, and each
streamed chunk is its token plus a constant, which is what "What Was Your Prompt?"
(USENIX Security 2024) and Whisper Leak (2025) read. Padding is added to the plaintext
before a dialect seals it, in a form every client already ignores, so no dialect's wire
format changes:

    JSON bodies (answers, errors, requests)   trailing spaces: JSON allows whitespace
                                              after the value (RFC 8259, section 2)
    SSE chunks (streamed answers)             a comment block first, ":" then spaces
                                              and a blank line: SSE parsers skip comment
                                              lines (WHATWG HTML, server-sent events)

Each plaintext grows to the next size of a `PaddingPolicy`: powers of two from a floor
(`pow2:256`, the default: a chunk of one token fits 256 bytes, an answer of up to 64
tokens falls in two or three sizes; past 128 KiB, steps of 64 KiB; streamed chunks grow
fourfold, 256 bytes to 1, 4 and 16 KiB, so that how many tokens a coalesced chunk holds
shows in at most 4 sizes) or multiples of a step (`fixed:256`), or `off`.
Sans-IO; the gateway wraps every dialect's responder (`padded`), clients pad their
request bodies (`PaddingPolicy.pad_request`) and strip what they pass on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from enclave.dialect import InnerRequest, InnerResponse, OuterResponse, Responder, StreamStart
from enclave.plaintext import IdentityResponder

# A padded plaintext is never larger than this much over its size (bounds the cost of
# an absurd policy and of padding a huge answer to a power of two).
MAX_PADDING = 64 * 1024
_COMMENT_OVERHEAD = 3  # ":" and "\n\n"
# A streamed chunk holds as many tokens as arrived in one coalescing interval: doubling
# sizes would tell how many (5 to 7 sizes across answers of 1 to 34 tokens); fourfold
# steps keep it to 4 (256 bytes to 16 KiB under `pow2:256`).
STREAM_GROWTH = 4


@dataclass(frozen=True)
class PaddingPolicy:
    kind: str = "pow2"  # "pow2", "fixed" or "off"
    size: int = 256

    @classmethod
    def parse(cls, text: str) -> PaddingPolicy:
        """`off`, `pow2:N` or `fixed:N` (N bytes, 16 to 65536); `ValueError` otherwise."""
        if text == "off":
            return cls("off", 0)
        kind, _, number = text.partition(":")
        if kind not in ("pow2", "fixed") or not number.isdigit():
            raise ValueError(f"padding must be off, pow2:N or fixed:N, not {text!r}")
        size = int(number)
        if not 16 <= size <= MAX_PADDING:
            raise ValueError("the padding size must be between 16 and 65536 bytes")
        return cls(kind, size)

    def __str__(self) -> str:
        return "off" if self.kind == "off" else f"{self.kind}:{self.size}"

    def target(self, length: int, *, minimum_pad: int = 0, growth: int = 2) -> int:
        """The padded size for `length` bytes that need at least `minimum_pad` more; under
        `pow2`, the floor times a power of `growth`."""
        if self.kind == "off":
            return length
        want = length + minimum_pad
        if self.kind == "fixed":
            target = -(-want // self.size) * self.size
        else:
            target = self.size
            while target < want:
                target *= growth
        if target - length <= MAX_PADDING:
            return target
        # past the doubling that would cost more than MAX_PADDING: steps of that size, so
        # a large answer is not sent at its exact length either
        return -(-want // MAX_PADDING) * MAX_PADDING

    def pad_json(self, body: bytes) -> bytes:
        return body + b" " * (self.target(len(body)) - len(body))

    def pad_events(self, events: bytes, *, framing: Callable[[int], int] | None = None
                   ) -> bytes:
        """`events` behind an SSE comment block that brings the chunk to its size once
        the dialect's framing of a chunk is added (`framing(n)`: the bytes it adds to a
        chunk of n, which may grow with n), so that the framed chunk is the size."""
        if self.kind == "off":
            return events
        frame = framing or _unframed
        least = len(events) + _COMMENT_OVERHEAD
        bucket = self.target(least + frame(least), growth=STREAM_GROWTH)
        # the largest padded size whose framing brings it to the bucket (exactly, where
        # one exists; a framing whose size jumps can leave a byte or two short): from
        # the bucket less its own framing (a framing never shrinks as n grows), up
        size = bucket - frame(bucket)
        while size + 1 + frame(size + 1) <= bucket:
            size += 1
        size = max(size, least)
        return b":" + b" " * (size - len(events) - _COMMENT_OVERHEAD) + b"\n\n" + events

    def pad_request(self, request: InnerRequest) -> InnerRequest:
        if not request.body:
            return request
        return InnerRequest(request.method, request.path, self.pad_json(request.body))


def _unframed(length: int) -> int:
    return 0


OFF = PaddingPolicy("off", 0)
DEFAULT_PADDING = PaddingPolicy()


@runtime_checkable
class PadsItself(Protocol):
    """A responder that re-frames the plaintext it is given (Atoma and Continuum seal
    each event, or one field, on their own): it pads what it seals itself."""

    def padded(self, policy: PaddingPolicy) -> Responder: ...


def padded(responder: Responder, policy: PaddingPolicy) -> Responder:
    """`responder` with every plaintext it seals padded under `policy` (the development
    plaintext dialect seals nothing, so it is left alone)."""
    if policy.kind == "off" or isinstance(responder, IdentityResponder):
        return responder
    if isinstance(responder, PadsItself):
        return responder.padded(policy)
    return PaddedResponder(responder, policy)


class PaddedResponder:
    """A dialect's responder whose every plaintext is padded before it is sealed."""

    def __init__(self, inner: Responder, policy: PaddingPolicy) -> None:
        self._inner, self._policy = inner, policy

    @property
    def streams(self) -> bool:
        return self._inner.streams

    def whole(self, status: int, content_type: str, body: bytes) -> OuterResponse:
        if content_type.startswith("text/event-stream"):
            return self._inner.whole(status, content_type, self._policy.pad_events(body))
        return self._inner.whole(status, content_type, self._policy.pad_json(body))

    def error(self, status: int, error: bytes) -> OuterResponse:
        return self._inner.error(status, self._policy.pad_json(error))

    def start(self, status: int, content_type: str) -> StreamStart:
        return self._inner.start(status, content_type)

    def chunk(self, events: bytes) -> bytes:
        framing = getattr(self._inner, "chunk_framing", None)  # a dialect's chunk framing
        return self._inner.chunk(self._policy.pad_events(events, framing=framing))

    def end(self) -> bytes:
        return self._inner.end()


def strip_events(data: bytes) -> bytes:
    """Client side: SSE bytes (whole events) without the comment blocks of padding."""
    if not data.startswith(b":") and b"\n\n:" not in data:
        return data
    return b"\n\n".join(b for b in data.split(b"\n\n") if not b.startswith(b":"))


def strip(response: InnerResponse) -> InnerResponse:
    """Client side: an opened answer without its padding."""
    if response.content_type.startswith("text/event-stream"):
        return InnerResponse(response.status, response.content_type,
                             strip_events(response.body))
    return InnerResponse(response.status, response.content_type, response.body.rstrip(b" "))
