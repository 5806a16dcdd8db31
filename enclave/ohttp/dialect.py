"""The native dialect: an Oblivious HTTP gateway resource (RFC 9458) in front of the
engine, both sides, over the dialect interface (`enclave.dialect`).

    GET  /.well-known/ohttp-gateway   application/ohttp-keys
    POST /.well-known/ohttp-gateway   message/ohttp-req          -> message/ohttp-res
                                      message/ohttp-chunked-req  -> message/ohttp-chunked-res

The inner request is a Binary HTTP OpenAI request. A chunked response carries an
indeterminate-length Binary HTTP response whose content chunks are the engine's SSE
events, sealed as produced; its end is authenticated (the final chunk). A single-shot
response to a streamed request gathers the stream into one message.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from enclave import discovery
from enclave.dialect import (
    NO_STORE,
    ControlRoute,
    EngineRoute,
    Headers,
    InnerHead,
    InnerRequest,
    InnerResponse,
    OuterRequest,
    OuterResponse,
    Responder,
    StreamStart,
    plain_refusal,
    refusal,
)
from enclave.errors import (
    ExpectationFailed,
    MalformedRequest,
    RequestRefused,
    SealedRefusal,
    UnauthenticatedAnswer,
)
from enclave.http_fields import media_type
from enclave.keys import KeyRing
from enclave.ohttp.bhttp import (
    BinaryHttpError,
    ContentChunk,
    Request,
    ResponseEnd,
    ResponseHead,
    StreamedResponseParser,
    decode_request,
    decode_response,
    encode_content_chunk,
    encode_request,
    encode_response,
    encode_response_end,
    encode_response_head,
)
from enclave.ohttp.bhttp import Response as BinaryResponse
from enclave.ohttp.chunked import ChunkedRequestOpener, ChunkedRequestSealer, ChunkedResponseSealer
from enclave.ohttp.encapsulation import (
    ENCAPSULATED_HEADER_SIZE,
    ClientRequest,
    ResponseSealer,
    decapsulate_request,
)
from enclave.ohttp.keyconfig import KeyConfig, encode_key_configs
from enclave.ohttp.protocol import (
    CHUNKED_REQUEST_MEDIA_TYPE,
    CHUNKED_RESPONSE_MEDIA_TYPE,
    DATE_PROBLEM_TYPE,
    KEY_CONFIG_PROBLEM_TYPE,
    KEYS_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
)
from enclave.ohttp.varint import encode_varint
from enclave.plugin import ClientSetup, DialectSetup
from enclave.receipts import TRAILER as RECEIPT_TRAILER
from enclave.receipts import PendingReceipt, Receipt, Receipts
from enclave.receipts import digest as receipt_digest
from enclave.wire_errors import ErrorCode, code_of

PATH = "/.well-known/ohttp-gateway"
NAME = "ohttp"


class UnsupportedMediaType(RequestRefused):
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    message = f"expected {REQUEST_MEDIA_TYPE} or {CHUNKED_REQUEST_MEDIA_TYPE}"


def _fields(content_type: str) -> Headers:
    return (("content-type", content_type),)


# draft-ietf-ohai-chunked-ohttp section 3: intermediaries pass each chunk on as it comes.
INCREMENTAL: Headers = (("incremental", "?1"),)


def _inner_error(status: int, error: bytes) -> tuple[str, bytes, Headers]:
    """A sealed error as RFC 9458 gives it: a refused `Date` (section 6.5.2) is the
    `date` problem with the gateway's own `Date`, so the client can correct its clock and
    retry; any other, our JSON error."""
    if code_of(error) != ErrorCode.STALE_REQUEST.value:
        return "application/json", error, ()
    problem = json.dumps({"type": DATE_PROBLEM_TYPE, "title": "the request's Date is not "
                          "acceptable", "status": status, **json.loads(error)}).encode()
    return ("application/problem+json", problem.ljust(len(error)),
            (("date", email.utils.formatdate(usegmt=True)),))


def _receipt_trailer(receipt: PendingReceipt | None, content: bytes) -> Headers:
    return () if receipt is None else ((RECEIPT_TRAILER, receipt(receipt_digest(content))),)


# --- server side ---------------------------------------------------------------------------

class _SingleShotResponder:
    """Answers a `message/ohttp-req` with one `message/ohttp-res`."""

    streams = False

    def __init__(self, sealer: ResponseSealer) -> None:
        self._sealer = sealer
        self._receipt: PendingReceipt | None = None

    def sign_with(self, receipt: PendingReceipt) -> None:
        self._receipt = receipt

    def whole(self, status: int, content_type: str, body: bytes, extra: Headers = ()
              ) -> OuterResponse:
        message = encode_response(BinaryResponse(status, (*_fields(content_type), *extra),
                                                 body, _receipt_trailer(self._receipt, body)))
        return OuterResponse(200, (("content-type", RESPONSE_MEDIA_TYPE), *NO_STORE),
                             self._sealer.seal(message))

    def error(self, status: int, error: bytes) -> OuterResponse:
        return self.whole(status, *_inner_error(status, error))

    def start(self, status: int, content_type: str) -> StreamStart:
        raise RuntimeError("a single-shot OHTTP response is never streamed")

    def chunk(self, events: bytes) -> bytes:
        raise RuntimeError("a single-shot OHTTP response is never streamed")

    def end(self) -> bytes:
        raise RuntimeError("a single-shot OHTTP response is never streamed")


class _ChunkedResponder:
    """Answers a `message/ohttp-chunked-req` with a `message/ohttp-chunked-res`."""

    streams = True
    _HEADERS: Headers = (("content-type", CHUNKED_RESPONSE_MEDIA_TYPE), *INCREMENTAL,
                         *NO_STORE)
    @staticmethod
    def chunk_framing(length: int) -> int:
        """What a content chunk adds to `length` bytes of events (its varint length):
        padding leaves room for it, so a padded chunk's plaintext is exactly its bucket
        (larger content the sealer breaks into pieces of `MAX_CHUNK_PLAINTEXT`)."""
        return len(encode_varint(length))

    def __init__(self, sealer: ChunkedResponseSealer) -> None:
        self._sealer = sealer
        self._receipt: PendingReceipt | None = None
        self._content = hashlib.sha256()  # what the client will open, for the receipt

    def sign_with(self, receipt: PendingReceipt) -> None:
        self._receipt = receipt

    def start(self, status: int, content_type: str, extra: Headers = ()) -> StreamStart:
        head = encode_response_head(status, (*_fields(content_type), *extra))
        return StreamStart(200, self._HEADERS, self._sealer.start()
                           + self._sealer.seal_chunk(head))

    def chunk(self, events: bytes) -> bytes:
        if self._receipt is not None:  # signed before the first chunk, or not at all
            self._content.update(events)
        return self._sealer.seal_chunk(encode_content_chunk(events))

    def end(self) -> bytes:
        """The final chunk: the end of content and the trailers, the receipt among them."""
        trailers: Headers = ()
        if self._receipt is not None:
            trailers = ((RECEIPT_TRAILER, self._receipt(self._content.hexdigest())),)
        return self._sealer.seal_final(encode_response_end(trailers))

    def whole(self, status: int, content_type: str, body: bytes, extra: Headers = ()
              ) -> OuterResponse:
        start = self.start(status, content_type, extra)
        sealed = self.chunk(body) if body else b""
        return OuterResponse(200, self._HEADERS, start.body + sealed + self.end())

    def error(self, status: int, error: bytes) -> OuterResponse:
        return self.whole(status, *_inner_error(status, error))


def server(setup: DialectSetup) -> OhttpServer:
    return OhttpServer(setup.keyring)


class OhttpServer:
    """The gateway side. Both framings share the path; the media type chooses."""

    name = NAME
    end_authenticated = True

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def accepts(self, request: OuterRequest) -> bool:
        return True

    def published_keys(self) -> dict[str, bytes]:
        return {"ohttp": encode_key_configs(self._keyring.key_configs())}

    def engine_routes(self) -> tuple[EngineRoute, ...]:
        return (EngineRoute("POST", PATH),)

    def control_routes(self) -> tuple[ControlRoute, ...]:
        return (ControlRoute("GET", PATH, lambda call: self.key_configs()),)

    def key_configs(self) -> OuterResponse:
        """`GET /.well-known/ohttp-gateway`, cacheable until the key rotates."""
        ttl = max(0, int(self._keyring.expires_at() - self._keyring.now()))
        return OuterResponse(200, (("content-type", KEYS_MEDIA_TYPE),
                                   ("cache-control", f"max-age={ttl}")),
                             encode_key_configs(self._keyring.key_configs()))

    def open(self, request: OuterRequest) -> tuple[InnerRequest, _SingleShotResponder
                                                   | _ChunkedResponder]:
        kind = media_type(request.headers)
        if kind == CHUNKED_REQUEST_MEDIA_TYPE:
            opener = ChunkedRequestOpener(self._keyring)
            parts = opener.push(request.body)
            parts.append(opener.finish())
            message = b"".join(parts)
            responder: _SingleShotResponder | _ChunkedResponder = _ChunkedResponder(
                opener.response_sealer())
        elif kind == REQUEST_MEDIA_TYPE:
            message, sealer = decapsulate_request(self._keyring, request.body)
            responder = _SingleShotResponder(sealer)
        else:
            raise UnsupportedMediaType()
        return decapsulated(message, responder, request.body), responder

    def refuse(self, error: RequestRefused) -> OuterResponse:
        return refused_outside(error)


def refused_outside(error: RequestRefused) -> OuterResponse:
    """A request refused before decapsulation, in the clear: an unknown key is RFC 9458
    section 5.3's `ohttp-key` problem, so the client fetches keys again."""
    if error.code == ErrorCode.UNKNOWN_KEY:
        return plain_refusal(error, problem_type=KEY_CONFIG_PROBLEM_TYPE, status=400)
    return plain_refusal(error)


def decapsulated(message: bytes, responder: Responder, body: bytes) -> InnerRequest:
    """The OpenAI request in a decapsulated Binary HTTP `message` (the encapsulated `body`
    names it for replay checks). From here every refusal is sealed (RFC 9458 section 5.2)."""
    try:
        inner = decode_request(message)
    except BinaryHttpError:
        raise SealedRefusal(MalformedRequest(
            "the encapsulated request is not a valid Binary HTTP message"),
            responder) from None
    if "100-continue" in (inner.header("expect") or "").lower():
        raise SealedRefusal(ExpectationFailed(), responder)
    try:
        sent_at = _sent_at(inner.header("date"))
    except RequestRefused as refused:
        raise SealedRefusal(refused, responder) from None
    return InnerRequest(inner.method.upper(), urlsplit(inner.path).path, inner.content,
                        replay_id=body[:ENCAPSULATED_HEADER_SIZE], sent_at=sent_at)


def _sent_at(date: str | None) -> float | None:
    """The inner request's `Date` (RFC 9458 section 6.5), sealed with the request."""
    if date is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        raise MalformedRequest("the inner Date header is not an HTTP date",
                               code=ErrorCode.STALE_REQUEST) from None


# --- client side ---------------------------------------------------------------------------

def _binary_request(request: InnerRequest) -> Request:
    """The inner request, with the client's `Date` for the gateway's replay window."""
    headers: tuple[tuple[str, str], ...] = (("date", email.utils.formatdate(usegmt=True)),)
    if request.body:
        headers += (("content-type", "application/json"),)
    return Request(request.method, request.path, "https", "cloister", headers, request.body)


def _opened(what: str = "the gateway's answer failed to open") -> UnauthenticatedAnswer:
    return UnauthenticatedAnswer(what)


class _SingleShotOpener:
    def __init__(self, sealed: ClientRequest, receipts: Receipts) -> None:
        self._sealed, self._receipts = sealed, receipts

    def whole(self, response: OuterResponse) -> InnerResponse:
        if response.status != 200 or media_type(response.headers) != RESPONSE_MEDIA_TYPE:
            raise refusal(response)
        try:
            inner = decode_response(self._sealed.open_response(response.body))
        except RequestRefused as exc:
            raise _opened() from exc
        self._receipts.check(dict(inner.trailers).get(RECEIPT_TRAILER), self._sealed.data,
                            receipt_digest(inner.content))
        return InnerResponse(inner.status, inner.header("content-type") or "application/json",
                             inner.content)

    def begin(self, status: int, headers: Headers) -> bool:
        return False

    def push(self, data: bytes) -> list[InnerHead | bytes]:
        raise RuntimeError("a single-shot OHTTP answer is read whole")

    def finish(self) -> list[InnerHead | bytes]:
        raise RuntimeError("a single-shot OHTTP answer is read whole")


class _ChunkedOpener:
    def __init__(self, sealer: ChunkedRequestSealer, sent: bytes, receipts: Receipts) -> None:
        self._opener = sealer.response_opener()
        self._parser = StreamedResponseParser()
        self._sent, self._receipts = sent, receipts
        self._content = hashlib.sha256()
        self._trailers: Headers = ()

    def begin(self, status: int, headers: Headers) -> bool:
        return status == 200 and media_type(headers) == CHUNKED_RESPONSE_MEDIA_TYPE

    def push(self, data: bytes) -> list[InnerHead | bytes]:
        try:
            return self._events(self._opener.push(data))
        except RequestRefused as exc:
            raise _opened("the gateway's answer failed to open (tampered)") from exc

    def finish(self) -> list[InnerHead | bytes]:
        try:
            out = self._events([self._opener.finish()])
            self._parser.finish()
        except RequestRefused as exc:
            raise _opened("the gateway's answer failed to open (tampered or truncated)"
                          ) from exc
        self._receipts.check(dict(self._trailers).get(RECEIPT_TRAILER), self._sent,
                            self._content.hexdigest())
        return out

    def _events(self, plaintexts: list[bytes]) -> list[InnerHead | bytes]:
        out: list[InnerHead | bytes] = []
        for piece in plaintexts:
            for event in self._parser.push(piece):
                if isinstance(event, ResponseHead):
                    out.append(InnerHead(event.status, dict(event.headers).get(
                        "content-type", "application/json")))
                elif isinstance(event, ContentChunk):
                    self._content.update(event.data)
                    out.append(event.data)
                elif isinstance(event, ResponseEnd):
                    self._trailers = event.trailers
        return out

    def whole(self, response: OuterResponse) -> InnerResponse:
        if not self.begin(response.status, response.headers):
            raise refusal(response)
        events = [*self.push(response.body), *self.finish()]
        heads = [e for e in events if isinstance(e, InnerHead)]
        if len(heads) != 1:
            raise _opened("the gateway's answer has no head")
        body = b"".join(e for e in events if isinstance(e, bytes))
        return InnerResponse(heads[0].status, heads[0].content_type, body)


class OhttpClient:
    """The client side, for one verified key configuration."""

    name = NAME

    def __init__(self, config: KeyConfig, *,
                 keep_receipt: Callable[[Receipt, bytes | None], None] | None = None) -> None:
        self.config = config
        self.receipts = Receipts(sink=keep_receipt)

    def seal(self, request: InnerRequest, *, stream: bool
             ) -> tuple[OuterRequest, _SingleShotOpener | _ChunkedOpener]:
        if stream:
            sealer = ChunkedRequestSealer(self.config)
            message = encode_request(_binary_request(request), indeterminate=True)
            body = sealer.header + sealer.seal_chunk(message) + sealer.seal_final(b"")
            return (OuterRequest("POST", PATH, (*_fields(CHUNKED_REQUEST_MEDIA_TYPE),
                                                *INCREMENTAL), body),
                    _ChunkedOpener(sealer, body, self.receipts))
        sealed = ClientRequest(self.config, encode_request(_binary_request(request)))
        return (OuterRequest("POST", PATH, _fields(REQUEST_MEDIA_TYPE), sealed.data),
                _SingleShotOpener(sealed, self.receipts))


class OhttpKeys(discovery.StaticKeys):
    """Client side: the key configurations at `PATH`, bound as `ohttp`."""

    name = NAME
    sealed_models = True
    credential = False

    def lookups(self) -> tuple[OuterRequest, ...]:
        return (OuterRequest("GET", PATH),)

    def __init__(self, keep_receipt: Callable[[Receipt, bytes | None], None] | None = None
                 ) -> None:
        self._keep_receipt = keep_receipt

    def candidate(self, index: int, response: OuterResponse) -> OhttpClient:
        return OhttpClient(discovery.first(discovery.key_configs(discovery.answered(
            response))), keep_receipt=self._keep_receipt)

    def vouched(self, candidate: Any, bound: Mapping[str, bytes]) -> bool:
        if not (isinstance(candidate, OhttpClient)
                and candidate.config in discovery.bound_configs(bound, "ohttp")):
            return False
        candidate.receipts.attest(bound)
        return True


def client(setup: ClientSetup) -> OhttpKeys:
    return OhttpKeys(setup.keep_receipt)
