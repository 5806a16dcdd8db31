"""EHBP's two sides as a dialect: the gateway's server (routes, key configuration,
refusals with the key-config problem type), the client and its key discovery.

Receipts (`enclave.receipts`) travel in the sealed frames, in forms Tinfoil's clients pass
on as body bytes that their JSON and SSE parsers skip: a whole JSON answer gets the
receipt as its last member (`with_receipt`; the response digest covers the body without
it), a stream one frame more after `data: [DONE]`, the SSE comment event `: cloister-receipt
<wire>` (the digest covers the frames before it, as opened). Our client tells the two by
the answer's content type, takes the receipt out and checks it; a stream cut before its
receipt frame is then refused by an attested client, which closes EHBP's gap of an
unauthenticated end (see the package docstring) for it. A whole answer that is not a JSON
object has no place for one, and an attested client refuses it (every answer our engine
routes give is one).
"""


from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from enclave import discovery
from enclave.dialect import (
    NO_STORE,
    SENT_AT_FIELD,
    ControlRoute,
    EngineRoute,
    Headers,
    InnerHead,
    InnerRequest,
    InnerResponse,
    OuterRequest,
    OuterResponse,
    StreamStart,
    plain_refusal,
    refusal,
    stamped,
    take_sent_at,
)
from enclave.ehbp.frames import (
    ENCAPSULATED_KEY_HEADER,
    KEY_CONFIG_PROBLEM_TYPE,
    KEYS_PATH,
    MAX_FRAME_SIZE,
    RESPONSE_NONCE_HEADER,
    SUITE,
    FrameOpener,
    FrameSealer,
    RequestSealer,
    key_config,
    open_request,
)
from enclave.engine import MODELS, PROMPT_ROUTES
from enclave.errors import (
    RequestRefused,
    UnauthenticatedAnswer,
)
from enclave.event_stream import EVENT_STREAM
from enclave.http_fields import field_value, media_type
from enclave.keys import KeyRing
from enclave.ohttp.keyconfig import KeyConfig, KeyConfigError
from enclave.ohttp.protocol import (
    KEYS_MEDIA_TYPE,
)
from enclave.plugin import ClientSetup, DialectSetup
from enclave.receipts import (
    PendingReceipt,
    Receipt,
    Receipts,
    digest,
    receipt_event,
    receipt_of_event,
    split_receipt,
    with_receipt,
)
from enclave.wire_errors import ErrorCode, code_of

NAME = "ehbp"
# Our gateway seals a whole answer in one frame: what a client holds back to take its
# receipt out is bounded by that.
MAX_WHOLE_ANSWER = MAX_FRAME_SIZE


class EhbpResponder:
    """Seals the answer to one EHBP request: one frame per whole body or streamed chunk,
    and a stream's receipt in a frame of its own."""

    streams = True

    def __init__(self, sealer: FrameSealer) -> None:
        self._sealer = sealer
        self._receipt: PendingReceipt | None = None
        self._content = hashlib.sha256()  # a stream's frames as the client opens them

    def sign_with(self, receipt: PendingReceipt) -> None:
        self._receipt = receipt

    def _headers(self, content_type: str) -> Headers:
        return (("content-type", content_type),
                (RESPONSE_NONCE_HEADER.lower(), self._sealer.nonce_header), *NO_STORE)

    def whole(self, status: int, content_type: str, body: bytes) -> OuterResponse:
        headers = self._headers(content_type)
        if media_type(headers) == EVENT_STREAM:  # framed as if streamed
            return OuterResponse(status, headers, self.chunk(body) + self.end())
        if self._receipt is not None:
            body = with_receipt(body, self._receipt(digest(body)))
        return OuterResponse(status, headers, self._sealer.seal(body))

    def error(self, status: int, error: bytes) -> OuterResponse:
        return self.whole(status, "application/json", error)

    def start(self, status: int, content_type: str) -> StreamStart:
        return StreamStart(status, self._headers(content_type))

    def chunk(self, events: bytes) -> bytes:
        if self._receipt is not None:
            self._content.update(events)
        return self._sealer.seal(events)

    def end(self) -> bytes:
        if self._receipt is None:
            return b""
        return self._sealer.seal(receipt_event(self._receipt(self._content.hexdigest())))


def server(setup: DialectSetup) -> EhbpServer:
    return EhbpServer(setup.keyring)


class EhbpServer:
    """The gateway side: any request that carries `Ehbp-Encapsulated-Key`."""

    name = NAME
    end_authenticated = False  # EHBP's design; see the module docstring

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def accepts(self, request: OuterRequest) -> bool:
        return request.header(ENCAPSULATED_KEY_HEADER) is not None

    def published_keys(self) -> dict[str, bytes]:
        return {"ehbp": key_config(self._keyring.current()).encode()}

    def engine_routes(self) -> tuple[EngineRoute, ...]:
        return tuple(EngineRoute(*route) for route in (MODELS, *PROMPT_ROUTES))

    def control_routes(self) -> tuple[ControlRoute, ...]:
        return (ControlRoute("GET", KEYS_PATH, lambda call: self.key_configs()),)

    def key_configs(self) -> OuterResponse:
        """`GET /.well-known/hpke-keys`."""
        return OuterResponse(200, (("content-type", KEYS_MEDIA_TYPE),
                                   ("cache-control", "max-age=300")),
                             self.published_keys()["ehbp"])

    def open(self, request: OuterRequest) -> tuple[InnerRequest, EhbpResponder]:
        encapsulated = request.header(ENCAPSULATED_KEY_HEADER) or ""
        plaintext, sealer = open_request(self._keyring, encapsulated, request.body)
        # A request without a body opens under any key anyone makes up: it is not a sealed
        # request, so there is nothing to record against a replay (a POST without a body
        # is then refused as one with no JSON; a GET has nothing to repeat).
        replay_id = bytes.fromhex(encapsulated) if request.body else b""
        inner = InnerRequest(request.method, request.path, plaintext, replay_id=replay_id)
        if SENT_AT_FIELD.encode() in plaintext:  # our client's sealed time
            try:
                payload = json.loads(plaintext)
            except (ValueError, UnicodeDecodeError):
                payload = None  # refused as no JSON further on
            if isinstance(payload, dict):
                sent_at = take_sent_at(payload)
                inner = dataclasses.replace(inner, sent_at=sent_at).with_payload(payload)
        return inner, EhbpResponder(sealer)

    def refuse(self, error: RequestRefused) -> OuterResponse:
        return plain_refusal(error, problem_type=KEY_CONFIG_PROBLEM_TYPE
                             if error.code == ErrorCode.UNKNOWN_KEY else None)


class EhbpOpener:
    """Opens the answer to one EHBP request; a sealed body needs at least one frame. A
    stream's frames pass as they open, up to its receipt frame; a whole answer is held
    until its end, for the receipt at the end of its body."""

    def __init__(self, sealer: RequestSealer, sent: bytes, receipts: Receipts) -> None:
        self._sealer, self._sent, self._receipts = sealer, sent, receipts
        self._opener: FrameOpener | None = None
        self._head: InnerHead | None = None
        self._frames = 0
        self._held: list[bytes] = []  # a whole answer's frames
        self._held_size = 0
        self._content = hashlib.sha256()
        self._receipt: str | None = None
        self._events = False  # a stream (by its content type), else a whole answer

    def begin(self, status: int, headers: Headers) -> bool:
        """A sealed 200 streams; a sealed error is read whole (`whole` checks it)."""
        return status == 200 and self._sealed(status, headers)

    def _sealed(self, status: int, headers: Headers) -> bool:
        nonce = field_value(headers, RESPONSE_NONCE_HEADER)
        if nonce is None:
            return False
        try:
            self._opener = self._sealer.response_opener(nonce)
        except RequestRefused as exc:
            raise UnauthenticatedAnswer("the gateway's answer failed to open") from exc
        self._head = InnerHead(status, field_value(headers, "content-type") or "application/json")
        self._events = media_type(headers) == EVENT_STREAM
        return True

    def push(self, data: bytes) -> list[InnerHead | bytes]:
        assert self._opener is not None, "begin() first"
        out: list[InnerHead | bytes] = []
        if self._head is not None:
            out.append(self._head)
            self._head = None
        try:
            frames = self._opener.push(data)
        except RequestRefused as exc:
            raise UnauthenticatedAnswer("the gateway's answer failed to open (tampered)"
                                        ) from exc
        self._frames += len(frames)
        return out + (self._streamed(frames) if self._events else self._hold(frames))

    def _streamed(self, frames: list[bytes]) -> list[InnerHead | bytes]:
        out: list[InnerHead | bytes] = []
        for plaintext in frames:
            if self._receipt is not None:
                raise UnauthenticatedAnswer("the gateway's answer goes on after its receipt")
            self._receipt = receipt_of_event(plaintext)
            if self._receipt is None:
                self._content.update(plaintext)
                out.append(plaintext)
        return out

    def _hold(self, frames: list[bytes]) -> list[InnerHead | bytes]:
        self._held += frames
        self._held_size += sum(map(len, frames))
        if self._held_size > MAX_WHOLE_ANSWER:
            raise UnauthenticatedAnswer("the gateway's answer is too large to be whole")
        return []

    def finish(self) -> list[InnerHead | bytes]:
        out = self.push(b"")
        assert self._opener is not None
        try:
            self._opener.finish()
        except RequestRefused as exc:
            raise UnauthenticatedAnswer("the gateway's answer was cut inside a frame"
                                        ) from exc
        if not self._frames:
            raise UnauthenticatedAnswer("the gateway's answer carries no frame")
        if not self._events:
            body, self._receipt = split_receipt(b"".join(self._held))
            self._content.update(body)
            out.append(body)
        self._receipts.check(self._receipt, self._sent, self._content.hexdigest())
        return out

    def whole(self, response: OuterResponse) -> InnerResponse:
        if not self._sealed(response.status, response.headers):
            raise refusal(response)
        events = [*self.push(response.body), *self.finish()]
        head = next(e for e in events if isinstance(e, InnerHead))
        body = b"".join(e for e in events if isinstance(e, bytes))
        if head.status != 200 and code_of(body) is None:
            raise UnauthenticatedAnswer(f"the gateway's answer came with HTTP {head.status} "
                                        "but is not a sealed error")
        return InnerResponse(head.status, head.content_type, body)


class EhbpClient:
    """The client side, for one verified key configuration."""

    name = NAME

    def __init__(self, config: KeyConfig, *,
                 keep_receipt: Callable[[Receipt, bytes | None], None] | None = None) -> None:
        self.config = config
        self.receipts = Receipts(sink=keep_receipt)

    def seal(self, request: InnerRequest, *, stream: bool) -> tuple[OuterRequest, EhbpOpener]:
        sealer = RequestSealer(self.config)
        headers = ((ENCAPSULATED_KEY_HEADER.lower(), sealer.encapsulated_key_header),
                   ("content-type", "application/json"))
        body = sealer.seal(stamped(request.body, time.time())) if request.body else b""
        return (OuterRequest(request.method, request.path, headers, body),
                EhbpOpener(sealer, body, self.receipts))


class EhbpKeys(discovery.StaticKeys):
    """Client side: one bare key configuration at `KEYS_PATH` (no list, one suite),
    bound as `ehbp`."""

    name = NAME
    sealed_models = True
    credential = False

    def __init__(self, keep_receipt: Callable[[Receipt, bytes | None], None] | None = None
                 ) -> None:
        self._keep_receipt = keep_receipt

    def lookups(self) -> tuple[OuterRequest, ...]:
        return (OuterRequest("GET", KEYS_PATH),)

    def candidate(self, index: int, response: OuterResponse) -> EhbpClient:
        try:
            config = KeyConfig.decode(discovery.answered(response))
        except KeyConfigError as exc:
            raise UnauthenticatedAnswer("malformed key configuration") from exc
        return EhbpClient(discovery.first([config], lambda c: c.supports(SUITE)),
                          keep_receipt=self._keep_receipt)

    def vouched(self, candidate: Any, bound: Mapping[str, bytes]) -> bool:
        if not (isinstance(candidate, EhbpClient)
                and candidate.config.encode() == bound.get("ehbp")):
            return False
        candidate.receipts.attest(bound)
        return True


def client(setup: ClientSetup) -> EhbpKeys:
    return EhbpKeys(setup.keep_receipt)
