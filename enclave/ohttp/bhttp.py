"""Binary HTTP messages (RFC 9292): known-length (framing 0/1) and indeterminate-length
(framing 2/3), plus an incremental parser for streamed indeterminate-length responses.

Hand-written: no maintained Python library implements RFC 9292. Sans-IO: bytes in,
frozen values out.

Layouts (RFC 9292 section 3):
    Known-Length Request  = framing(0) control-data known-fields content trailers
    Known-Length Response = framing(1) informational* status known-fields content trailers
    Indeterminate Request  = framing(2) control-data fields* 0 chunks* 0 fields* 0
    Indeterminate Response = framing(3) informational* status fields* 0 chunks* 0 fields* 0
A message may be truncated at a section boundary (empty remaining sections) and
followed by zero padding (section 3.8).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from enclave.errors import DecryptError, MessageTooLargeError
from enclave.http_fields import Fields, field_value
from enclave.ohttp.varint import decode_varint, encode_varint

KNOWN_REQUEST, KNOWN_RESPONSE, INDETERMINATE_REQUEST, INDETERMINATE_RESPONSE = 0, 1, 2, 3

# Bound on one decoded message held in memory (the gateway's body limit is lower).
MAX_MESSAGE_SIZE = 16 << 20


class BinaryHttpError(DecryptError):
    """A malformed Binary HTTP message. Inside OHTTP it is reported like any failure to
    open, so it gives no more away than a bad tag would."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    scheme: str = "https"
    authority: str = ""
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()

    def header(self, name: str) -> str | None:
        return field_value(self.headers, name)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()
    informational: tuple[tuple[int, Fields], ...] = field(default=())

    def header(self, name: str) -> str | None:
        return field_value(self.headers, name)


# --- encoding -------------------------------------------------------------------------

def _lp(data: bytes) -> bytes:
    return encode_varint(len(data)) + data


def _field_lines(fields: Fields) -> bytes:
    return b"".join(_lp(k.lower().encode()) + _lp(v.encode()) for k, v in fields)


def _control_data(req: Request) -> bytes:
    return b"".join(_lp(x.encode()) for x in (req.method, req.scheme, req.authority, req.path))


def encode_request(req: Request, *, indeterminate: bool = False) -> bytes:
    if indeterminate:
        content = (_lp(req.content) if req.content else b"") + b"\x00"
        return (encode_varint(INDETERMINATE_REQUEST) + _control_data(req)
                + _field_lines(req.headers) + b"\x00" + content
                + _field_lines(req.trailers) + b"\x00")
    return (encode_varint(KNOWN_REQUEST) + _control_data(req) + _lp(_field_lines(req.headers))
            + _lp(req.content) + _lp(_field_lines(req.trailers)))


def encode_response(resp: Response) -> bytes:
    """Known-length response (framing 1)."""
    info = b"".join(encode_varint(s) + _lp(_field_lines(f)) for s, f in resp.informational)
    return (encode_varint(KNOWN_RESPONSE) + info + encode_varint(resp.status)
            + _lp(_field_lines(resp.headers)) + _lp(resp.content)
            + _lp(_field_lines(resp.trailers)))


def encode_response_head(status: int, headers: Fields) -> bytes:
    """Start of an indeterminate-length response: framing, status, header fields."""
    return encode_varint(INDETERMINATE_RESPONSE) + encode_varint(status) + _field_lines(
        headers) + b"\x00"


def encode_content_chunk(data: bytes) -> bytes:
    """One content chunk of an indeterminate-length message (never empty: 0 ends it)."""
    if not data:
        raise ValueError("an indeterminate-length content chunk cannot be empty")
    return _lp(data)


def encode_response_end(trailers: Fields = ()) -> bytes:
    """End of content, then the trailer section."""
    return b"\x00" + _field_lines(trailers) + b"\x00"


# --- decoding -------------------------------------------------------------------------

class _Reader:
    """Cursor over a complete message. Linear in its size: where the zero padding starts
    (section 3.8) is found once, not by looking at the rest at every step."""

    def __init__(self, data: bytes) -> None:
        if len(data) > MAX_MESSAGE_SIZE:
            raise MessageTooLargeError()
        self.data = data
        self.pos = 0
        self._padding_at = len(data.rstrip(b"\x00"))

    @property
    def at_end(self) -> bool:
        return self.pos >= self._padding_at

    def varint(self) -> int:
        got = decode_varint(self.data, self.pos)
        if got is None:
            raise BinaryHttpError()
        value, self.pos = got
        return value

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise BinaryHttpError()
        out = self.data[self.pos:self.pos + size]
        self.pos += size
        return out

    def lp(self) -> bytes:
        return self.raw(self.varint())

    def text(self) -> str:
        try:
            return self.lp().decode()
        except UnicodeDecodeError:
            raise BinaryHttpError() from None


def _known_fields(r: _Reader) -> Fields:
    if r.at_end:
        return ()
    section = _Reader(r.lp())
    out: list[tuple[str, str]] = []
    while section.pos < len(section.data):
        out.append((section.text(), section.text()))
    return tuple(out)


def _terminated(r: _Reader) -> None:
    """At the padding inside a section: its terminator (a zero) is the padding's first
    byte, else the message was cut inside the section, which section 3.8 does not allow
    (only whole sections may be left out)."""
    if r.pos >= len(r.data):
        raise BinaryHttpError()
    r.pos += 1


def _indeterminate_fields(r: _Reader) -> Fields:
    out: list[tuple[str, str]] = []
    if r.at_end:
        return ()  # the section left out (section 3.8)
    while True:
        if r.at_end:
            _terminated(r)
            return tuple(out)
        name = r.text()
        if not name:
            return tuple(out)
        out.append((name, r.text()))


def _indeterminate_content(r: _Reader) -> bytes:
    parts = []
    if r.at_end:
        return b""  # the section left out
    while True:
        if r.at_end:
            _terminated(r)
            break
        chunk = r.lp()
        if not chunk:
            break
        parts.append(chunk)
    return b"".join(parts)


def _rest_of_message(r: _Reader, *, known: bool) -> tuple[Fields, bytes, Fields]:
    """Header fields, content and trailers, then nothing but padding."""
    if known:
        headers = _known_fields(r)
        content = b"" if r.at_end else r.lp()
        trailers = _known_fields(r)
    else:
        headers = _indeterminate_fields(r)
        content = _indeterminate_content(r)
        trailers = _indeterminate_fields(r)
    if not r.at_end:
        raise BinaryHttpError()
    return headers, content, trailers


def decode_request(data: bytes) -> Request:
    r = _Reader(data)
    framing = r.varint()
    if framing not in (KNOWN_REQUEST, INDETERMINATE_REQUEST):
        raise BinaryHttpError()
    method, scheme, authority, path = r.text(), r.text(), r.text(), r.text()
    headers, content, trailers = _rest_of_message(r, known=framing == KNOWN_REQUEST)
    return Request(method, path, scheme, authority, headers, content, trailers)


def decode_response(data: bytes) -> Response:
    r = _Reader(data)
    framing = r.varint()
    if framing not in (KNOWN_RESPONSE, INDETERMINATE_RESPONSE):
        raise BinaryHttpError()
    informational: list[tuple[int, Fields]] = []
    while True:
        status = r.varint()
        if not 100 <= status <= 599:
            raise BinaryHttpError()
        if status >= 200:
            break
        fields = _known_fields(r) if framing == KNOWN_RESPONSE else _indeterminate_fields(r)
        informational.append((status, fields))
    headers, content, trailers = _rest_of_message(r, known=framing == KNOWN_RESPONSE)
    return Response(status, headers, content, trailers, tuple(informational))


# --- incremental parsing of a streamed indeterminate-length response ---------------------

@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: Fields


@dataclass(frozen=True)
class ContentChunk:
    data: bytes


@dataclass(frozen=True)
class ResponseEnd:
    trailers: Fields


class StreamedResponseParser:
    """Parses an indeterminate-length response as its bytes arrive.

    `push(data)` returns the events completed so far; `finish()` checks the message
    ended. Bytes are kept only until the element they belong to is complete.
    """

    def __init__(self, *, max_buffer: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._state = "framing"
        self._fields: list[tuple[str, str]] = []
        self._status = 0
        self._max_buffer = max_buffer

    @property
    def complete(self) -> bool:
        return self._state == "done"

    def push(self, data: bytes) -> list[ResponseHead | ContentChunk | ResponseEnd]:
        self._buf += data
        events: list[ResponseHead | ContentChunk | ResponseEnd] = []
        while self._state != "done" and self._step(events):
            pass
        if self._state == "done" and any(self._buf):
            raise BinaryHttpError()  # only zero padding may follow the end
        if len(self._buf) > self._max_buffer:
            raise MessageTooLargeError()
        return events

    def finish(self) -> None:
        if self._state != "done":
            raise BinaryHttpError()

    def _take_varint(self) -> int | None:
        got = decode_varint(self._buf)
        if got is None:
            return None
        value, used = got
        del self._buf[:used]
        return value

    def _peek_lp(self, offset: int = 0) -> tuple[bytes, int] | None:
        """A length-prefixed string at `offset` without consuming it, and where it ends."""
        got = decode_varint(self._buf, offset)
        if got is None:
            return None
        size, start = got
        if len(self._buf) < start + size:
            if size > self._max_buffer:
                raise MessageTooLargeError()
            return None
        return bytes(self._buf[start:start + size]), start + size

    def _take_lp(self) -> bytes | None:
        got = self._peek_lp()
        if got is None:
            return None
        del self._buf[:got[1]]
        return got[0]

    def _step(self, events: list[ResponseHead | ContentChunk | ResponseEnd]) -> bool:
        """Advance by one element; False when more bytes are needed."""
        if self._state == "framing":
            framing = self._take_varint()
            if framing is None:
                return False
            if framing != INDETERMINATE_RESPONSE:
                raise BinaryHttpError()
            self._state = "status"
        elif self._state == "status":
            status = self._take_varint()
            if status is None:
                return False
            if not 100 <= status <= 599:
                raise BinaryHttpError()
            self._status, self._state = status, "fields"
        elif self._state in ("fields", "trailers"):
            return self._step_field(events)
        elif self._state == "content":
            chunk = self._take_lp()
            if chunk is None:
                return False
            if chunk:
                events.append(ContentChunk(chunk))
            else:
                self._state = "trailers"
        return True

    def _step_field(self, events: list[ResponseHead | ContentChunk | ResponseEnd]) -> bool:
        name = self._peek_lp()
        if name is None:
            return False
        if not name[0]:  # end of this field section
            del self._buf[:name[1]]
            fields, self._fields = tuple(self._fields), []
            if self._state == "trailers":
                events.append(ResponseEnd(fields))
                self._state = "done"
            elif self._status < 200:
                self._state = "status"  # informational response: skipped
            else:
                events.append(ResponseHead(self._status, fields))
                self._state = "content"
            return True
        value = self._peek_lp(name[1])
        if value is None:
            return False  # wait for the whole field line
        del self._buf[:value[1]]
        try:
            self._fields.append((name[0].decode(), value[0].decode()))
        except UnicodeDecodeError:
            raise BinaryHttpError() from None
        return True
