"""Azure's OHTTP convention, as its published clients speak it (Microsoft's `ohttpy` and
attested-ohttp-client, on Microsoft's fork of the `ohttp` crate): a server-only alias of
the native dialect, over the same keys (bound in the report as `ohttp`).

    GET  /discover  the key configuration list (RFC 9458 section 3) as hex text
    POST /score     message/ohttp-chunked-req: ONE RFC 9458 encapsulated request
                    (single-shot, label "message/bhttp request") carrying a known-length
                    Binary HTTP request for an OpenAI path
                 -> the inner status and media type as the outer ones, the content in
                    draft-ohai-chunked-ohttp-01 framing:
                        response_nonce {leb128(len) Seal("", chunk)}*
                        0 leb128(len) Seal("final", last)
                    with the keys of a single-shot response ("message/bhttp response")
                    and chunk i sealed under `aead_nonce XOR i`.

What the convention gives away beside RFC 9458: the answer's status and media type cross
in the clear (its clients take them from the outer response). The content stays sealed
and padded. A whole answer is one final chunk: those clients open one chunk per network
read, so fewer chunks is what they read reliably.
"""

from __future__ import annotations

import hashlib
import os

from enclave.dialect import (
    NO_STORE,
    ControlRoute,
    EngineRoute,
    Headers,
    InnerRequest,
    OuterRequest,
    OuterResponse,
    StreamStart,
)
from enclave.errors import RequestRefused
from enclave.http_fields import media_type
from enclave.keys import KeyRing
from enclave.ohttp.chunked import ResponseCipher
from enclave.ohttp.dialect import decapsulated, refused_outside
from enclave.ohttp.encapsulation import ResponseSealer, decapsulate_request
from enclave.ohttp.keyconfig import encode_key_configs
from enclave.ohttp.protocol import (
    CHUNKED_REQUEST_MEDIA_TYPE,
    FINAL_CHUNK_AAD,
    RESPONSE_LABEL,
)
from enclave.ohttp.suites import response_nonce_size
from enclave.plugin import DialectSetup
from enclave.receipts import PendingReceipt, digest, receipt_event, with_receipt
from enclave.wire_errors import ErrorCode

NAME = "azure-ohttp"
DISCOVER_PATH = "/discover"
SCORE_PATH = "/score"


def leb128(n: int) -> bytes:
    """An unsigned LEB128 integer: the fork's chunk lengths (not RFC 9000 varints)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class DraftChunkedSealer:
    """Sans-IO: a response in draft-01 chunks, for the request `sealer` opened."""

    def __init__(self, sealer: ResponseSealer, *, response_nonce: bytes | None = None
                 ) -> None:
        opened = sealer.opened
        size = response_nonce_size(opened.suite)
        self.nonce = os.urandom(size) if response_nonce is None else response_nonce
        self._cipher = ResponseCipher(opened.suite, opened.context, opened.enc, self.nonce,
                                      RESPONSE_LABEL)

    def chunk(self, plaintext: bytes) -> bytes:
        sealed = self._cipher.seal(plaintext, b"")
        return leb128(len(sealed)) + sealed

    def final(self, plaintext: bytes = b"") -> bytes:
        sealed = self._cipher.seal(plaintext, FINAL_CHUNK_AAD)
        return b"\x00" + leb128(len(sealed)) + sealed


class _Responder:
    """Receipts as EHBP carries them (`enclave.receipts`: the same content, no Binary
    HTTP trailers): a whole JSON answer's last member, a stream's SSE comment event in the
    final chunk. Azure's clients skip both; none of them checks a receipt."""

    streams = True

    def __init__(self, sealer: DraftChunkedSealer) -> None:
        self._sealer = sealer
        self._receipt: PendingReceipt | None = None
        self._content = hashlib.sha256()

    def sign_with(self, receipt: PendingReceipt) -> None:
        self._receipt = receipt

    @staticmethod
    def _headers(content_type: str) -> Headers:
        return (("content-type", content_type), *NO_STORE)

    def whole(self, status: int, content_type: str, body: bytes) -> OuterResponse:
        if self._receipt is not None:
            body = with_receipt(body, self._receipt(digest(body)))
        return OuterResponse(status, self._headers(content_type),
                             self._sealer.nonce + self._sealer.final(body))

    def error(self, status: int, error: bytes) -> OuterResponse:
        return self.whole(status, "application/json", error)

    def start(self, status: int, content_type: str) -> StreamStart:
        return StreamStart(status, self._headers(content_type), self._sealer.nonce)

    def chunk(self, events: bytes) -> bytes:
        if self._receipt is not None:
            self._content.update(events)
        return self._sealer.chunk(events)

    def end(self) -> bytes:
        if self._receipt is None:
            return self._sealer.final()
        return self._sealer.final(receipt_event(self._receipt(self._content.hexdigest())))


class UnsupportedMediaType(RequestRefused):
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    message = f"expected {CHUNKED_REQUEST_MEDIA_TYPE}"


class AzureOhttpServer:
    name = NAME
    end_authenticated = True

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def accepts(self, request: OuterRequest) -> bool:
        return True

    def published_keys(self) -> dict[str, bytes]:
        return {}  # the native dialect's keys, bound there

    def engine_routes(self) -> tuple[EngineRoute, ...]:
        return (EngineRoute("POST", SCORE_PATH),)

    def control_routes(self) -> tuple[ControlRoute, ...]:
        return (ControlRoute("GET", DISCOVER_PATH, lambda call: self.discover()),)

    def discover(self) -> OuterResponse:
        ttl = max(0, int(self._keyring.expires_at() - self._keyring.now()))
        return OuterResponse(200, (("content-type", "text/plain"),
                                   ("cache-control", f"max-age={ttl}")),
                             encode_key_configs(self._keyring.key_configs()).hex().encode())

    def open(self, request: OuterRequest) -> tuple[InnerRequest, _Responder]:
        if media_type(request.headers) != CHUNKED_REQUEST_MEDIA_TYPE:
            raise UnsupportedMediaType()
        message, sealer = decapsulate_request(self._keyring, request.body)
        responder = _Responder(DraftChunkedSealer(sealer))
        return decapsulated(message, responder, request.body), responder

    def refuse(self, error: RequestRefused) -> OuterResponse:
        return refused_outside(error)


def server(setup: DialectSetup) -> AzureOhttpServer:
    return AzureOhttpServer(setup.keyring)
