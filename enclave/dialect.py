"""The dialect interface: one shape for every wire dialect, server side and client side.

Sans-IO in h11's manner: bytes in, bytes or small frozen values out; no sockets, no
Starlette, no httpx. The gateway and the proxy are thin adapters over it, so padding,
replay protection or a new dialect is written once, here.

    server   ServerDialect.open(OuterRequest) -> (InnerRequest, Responder)
             Responder.whole(...) / .error(...)               -> OuterResponse
             Responder.start(...) -> StreamStart, .chunk(events) -> bytes, .end() -> bytes
             ServerDialect.refuse(RequestRefused)             -> OuterResponse (unsealed)
    client   ClientDialect.seal(InnerRequest, stream=...)      -> (OuterRequest, Opener)
             Opener.whole(OuterResponse)                       -> InnerResponse
             Opener.begin(status, headers) -> bool  (a sealed stream follows?)
             Opener.push(bytes) -> [InnerHead | bytes],  Opener.finish() -> [...]

`open` raises a `RequestRefused` (enclave.errors); a client's opener raises an
`AnswerRefused` for anything the gateway did not authenticate, so a client never passes
on a status or a byte that did not come from the enclave. A dialect whose end of stream
is not authenticated (EHBP) says so in `end_authenticated`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from enclave.errors import (
    AnswerRefused,
    MalformedRequest,
    RequestRefused,
    StaleCredentials,
    UnauthenticatedAnswer,
)
from enclave.http_fields import Fields, field_value
from enclave.wire_errors import code_of, error_body

Headers = Fields  # names in lower case


@dataclass(frozen=True)
class OuterRequest:
    """A request as it crosses the wire: what arrived at the gateway, or what a client
    sends."""

    method: str
    path: str
    headers: Headers = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return field_value(self.headers, name)

    @cached_property
    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object, parsed once however many dialects look (None: it is
        not one). Read it, copy it to change it."""
        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class OuterResponse:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        return field_value(self.headers, name)


@dataclass(frozen=True)
class StreamStart:
    """The status and headers of a streamed answer, and bytes to send before the first
    chunk (for instance OHTTP's response nonce and sealed inner head)."""

    status: int
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True)
class InnerRequest:
    """The plaintext OpenAI request, as the engine sees it. A server dialect also says
    what makes the sealed request unique (`replay_id`: the HPKE `enc`, Atoma's client
    key, nonce and salt, Continuum's request nonce), when the client says it sent it
    (`sent_at`, Unix seconds, where the dialect carries a time inside the encryption),
    and the client's stable identity if it has one (`tenant`)."""

    method: str
    path: str
    body: bytes = b""
    replay_id: bytes = b""
    sent_at: float | None = None
    # Who the request is from, where the dialect has a stable client identity (the
    # prefix cache is shared only within one; empty: this request shares with no one).
    tenant: bytes = b""

    @cached_property
    def payload(self) -> Any:
        """The body's JSON, parsed once for the whole path (the dialect that opened the
        request may have parsed it already: `with_payload`); `ValueError` when it is not
        JSON. Read it, copy it to change it (`with_payload` of the copy)."""
        return json.loads(self.body)

    def with_payload(self, payload: Any, *, body: bytes | None = None) -> InnerRequest:
        """This request with `payload` as its body: serialised here, or `body` where the
        caller has the very bytes `payload` was parsed from; never parsed again."""
        changed = dataclasses.replace(
            self, body=json.dumps(payload).encode() if body is None else body)
        changed.__dict__["payload"] = payload  # what `cached_property` would have kept
        return changed


@dataclass(frozen=True)
class InnerHead:
    status: int
    content_type: str


@dataclass(frozen=True)
class InnerResponse:
    """A plaintext answer the client has authenticated."""

    status: int
    content_type: str
    body: bytes


# --- a dialect's routes --------------------------------------------------------------------
# A server dialect names what it serves, sans-IO; `enclave.registry` lists the dialects
# and the gateway mounts every route from there (one engine endpoint, one control
# endpoint), knowing no dialect by name.

@dataclass(frozen=True)
class EngineRoute:
    method: str
    path: str
    # Where the gateway keeps accounts, the route takes a Bearer API key, checked before
    # the body is read, and its requests are metered against the key's budget.
    credential: bool = False


@dataclass(frozen=True)
class ControlCall:
    """What a control route's answer is given."""

    request: OuterRequest
    client: str  # whom the request counts against (its API key, else its address)
    models: Callable[[], list[str]]  # the models the engine serves, the default first


@dataclass(frozen=True)
class ControlRoute:
    method: str
    path: str
    answer: Callable[[ControlCall], OuterResponse]  # raises `RequestRefused`
    max_body: int = 0  # 0: the answer needs no body (a key lookup)
    rate_limited: bool = False  # anonymous and costly: the client's token bucket first
    credential: bool = False  # like `EngineRoute.credential`


class Responder(Protocol):
    """Server side: how the answer to one opened request leaves the enclave."""

    @property
    def streams(self) -> bool:
        """Whether a streamed engine answer is relayed as produced (False: the gateway
        gathers it and calls `whole`, as OHTTP's single-shot messages need)."""

    def whole(self, status: int, content_type: str, body: bytes) -> OuterResponse:
        """One complete answer."""

    def error(self, status: int, error: bytes) -> OuterResponse:
        """An OpenAI-shaped error JSON, sealed wherever the dialect can seal."""

    def start(self, status: int, content_type: str) -> StreamStart:
        """The beginning of a streamed answer."""

    def chunk(self, events: bytes) -> bytes:
        """One or more complete SSE events, as the engine produced them."""

    def end(self) -> bytes:
        """After the last chunk: the dialect's end of stream."""


class ServerDialect(Protocol):
    name: str
    end_authenticated: bool

    def accepts(self, request: OuterRequest) -> bool:
        """Whether this request is in this dialect (several share `/v1/chat/completions`)."""

    def open(self, request: OuterRequest) -> tuple[InnerRequest, Responder]:
        """The plaintext request and its responder; raises `RequestRefused`."""

    def refuse(self, error: RequestRefused) -> OuterResponse:
        """A request refused before it was opened, in the dialect's own error shape
        (unsealed: it says nothing about content): the dialect's refusal or the
        gateway's (`GatewayError`, of the same family)."""

    def published_keys(self) -> dict[str, bytes]:
        """The public keys this dialect accepts traffic for, bound in the attestation
        report under these names."""

    def engine_routes(self) -> Sequence[EngineRoute]:
        """The paths whose requests it opens for the engine."""

    def control_routes(self) -> Sequence[ControlRoute]:
        """The paths it answers itself: key lookups, registrations."""


class Opener(Protocol):
    """Client side: opens the answer to one sealed request."""

    def whole(self, response: OuterResponse) -> InnerResponse:
        """The authenticated answer, or `AnswerRefused`."""

    def begin(self, status: int, headers: Headers) -> bool:
        """Whether the outer head announces a sealed stream (feed its body to `push`,
        then `finish`). False: read the body whole and hand it to `whole`, which opens a
        sealed answer or says why it refuses it."""

    def push(self, data: bytes) -> list[InnerHead | bytes]:
        """What `data` completes: the inner head first (once), then plaintext chunks."""

    def finish(self) -> list[InnerHead | bytes]:
        """The end of the body: what remains, or `AnswerRefused` when the answer was cut
        before its authenticated end."""


class ClientDialect(Protocol):
    name: str

    def seal(self, request: InnerRequest, *, stream: bool) -> tuple[OuterRequest, Opener]:
        """What to send, and the opener for its answer."""


@dataclass(frozen=True)
class Registration:
    """A request a client makes after verification and before it can use the keys
    (Continuum registers a secret sealed to the verified key), and what turns its
    answer into the dialect's client side (`AnswerRefused` if it cannot)."""

    request: OuterRequest
    finish: Callable[[OuterResponse], ClientDialect]


class KeyDiscovery(Protocol):
    """Client side, sans-IO: where a dialect's keys are published, under which names the
    attestation report binds them, and how they become its `ClientDialect`. One driver
    does the I/O for every dialect (`proxy.client.discover` and `ready`)."""

    name: str
    # Whether `GET /v1/models` is sealed in this dialect (Atoma's and Continuum's seeds
    # leave it in the clear: the client then checks only its shape).
    sealed_models: bool
    # Whether requests carry the client's own credential (a platform API key): it then
    # travels only over TLS that the attestation report binds (`proxy.pinning`).
    credential: bool

    def lookups(self) -> Sequence[OuterRequest]:
        """What to ask, in order; the first answer that yields a candidate wins."""

    def candidate(self, index: int, response: OuterResponse) -> Any:
        """The keys in the answer to `lookups()[index]` (not yet trusted), or None to ask
        the next; `AnswerRefused` when it is malformed, or the last one fails."""

    def vouched(self, candidate: Any, bound: Mapping[str, bytes]) -> bool:
        """Whether the verified report's bound keys are exactly these."""

    def ready(self, candidate: Any) -> ClientDialect | Registration:
        """After verification: the client side, or a registration to make first."""

    def expired(self, dialect: ClientDialect) -> bool:
        """Whether the credentials must be renewed before the next request."""


# --- shared helpers ----------------------------------------------------------------------

JSON = "application/json"
NO_STORE: Headers = (("cache-control", "no-store"),)
STALE_CODES = frozenset({"unknown_key", "unknown_secret"})


def json_response(status: int, body: bytes, *, extra: Headers = ()) -> OuterResponse:
    return OuterResponse(status, (("content-type", JSON), *extra), body)


def plain_refusal(error: RequestRefused, *, problem_type: str | None = None,
                  status: int | None = None) -> OuterResponse:
    """An unsealed refusal as an OpenAI-shaped error; with `problem_type`, an RFC 9457
    problem document (what OHTTP and EHBP clients look for on a stale key); `status`
    where the dialect's specification names another than the code's."""
    status = error.status if status is None else status
    body = error_body(error.code, error.message)
    if problem_type is None:
        return json_response(status, json.dumps(body).encode())
    problem = {"type": problem_type, "title": body["error"]["message"], "status": status,
               **body}
    return OuterResponse(status, (("content-type", "application/problem+json"),),
                         json.dumps(problem).encode())


def refusal(response: OuterResponse) -> AnswerRefused:
    """Client side: what an unsealed answer means. Never its body: only whether it says
    our key or secret is stale (refetch, retry once) or not (refuse)."""
    code = code_of(response.body)
    if code in STALE_CODES and 400 <= response.status < 500:
        return StaleCredentials(f"the gateway no longer accepts our key ({code})",
                                outer_status=response.status, outer_code=code)
    said = f"{response.status} {code}" if code else str(response.status)
    return UnauthenticatedAnswer(f"the gateway answered HTTP {said} without authenticating "
                                 "it", outer_status=response.status, outer_code=code)


def with_fields(payload: bytes, fields: dict[str, Any]) -> bytes:
    """`payload` (a JSON object) with `fields` added, without re-encoding the rest."""
    body = payload.rstrip()
    if not body.endswith(b"}"):
        raise ValueError("an engine event must be a JSON object")
    inner = body[:-1].rstrip()
    extra = json.dumps(fields, separators=(",", ":")).encode()[1:]
    return inner + (extra if inner.endswith(b"{") else b"," + extra)


# Our clients seal the time they sent a request inside it (whole seconds: a fixed size, so
# padding buckets stay aligned); the gateway takes it out (`take_sent_at`) for its replay
# window. OHTTP carries the inner `Date` instead (RFC 9458 section 6.5).
SENT_AT_FIELD = "cloister_sent_at"


def stamped(body: bytes, now: float) -> bytes:
    """Client side: the JSON object `body` with the time it is sent added (unchanged when
    it is not a JSON object: the gateway refuses it anyway)."""
    try:
        return with_fields(body, {SENT_AT_FIELD: int(now)})
    except ValueError:
        return body


def take_sent_at(payload: dict[str, Any]) -> float | None:
    """Server side, from a payload that was sealed whole: the client's time, removed from
    it; `MalformedRequest` when it is not a number of seconds."""
    if SENT_AT_FIELD not in payload:
        return None
    value = payload.pop(SENT_AT_FIELD)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise MalformedRequest(f"`{SENT_AT_FIELD}` must be a number of seconds")
    return float(value)
