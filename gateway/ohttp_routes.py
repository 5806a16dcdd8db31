"""The native dialect: an Oblivious HTTP gateway resource (RFC 9458) in front of the engine.

    GET  /.well-known/ohttp-gateway   application/ohttp-keys
    POST /.well-known/ohttp-gateway   message/ohttp-req          -> message/ohttp-res
                                      message/ohttp-chunked-req  -> message/ohttp-chunked-res

The inner request is a Binary HTTP OpenAI request (`/v1/chat/completions`,
`/v1/completions`, `/v1/embeddings`, `/v1/models`). A chunked response carries an
indeterminate-length Binary HTTP response whose content chunks are the engine's SSE
events, each sealed as its own OHTTP chunk as soon as the engine produces it.

Failures before the request is opened are plaintext errors that say nothing about the
content (one generic `decryption_failed`, or `unknown_key` so clients refetch); once it
is opened, every answer, errors included, travels encrypted.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from enclave.engine import ENGINE_ROUTES, EngineRequest, EngineResponse
from enclave.errors import EnclaveCryptoError
from enclave.keys import KeyRing
from enclave.ohttp import (
    ChunkedRequestOpener,
    ChunkedResponseSealer,
    ResponseSealer,
    decapsulate_request,
    encode_key_configs,
)
from enclave.ohttp.bhttp import Request as BinaryRequest
from enclave.ohttp.bhttp import Response as BinaryResponse
from enclave.ohttp.bhttp import (
    decode_request,
    encode_content_chunk,
    encode_response,
    encode_response_end,
    encode_response_head,
)
from enclave.ohttp.protocol import (
    CHUNKED_REQUEST_MEDIA_TYPE,
    CHUNKED_RESPONSE_MEDIA_TYPE,
    KEY_CONFIG_PROBLEM_TYPE,
    KEYS_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
)
from gateway.body import parse_json_object, read_body
from gateway.errors import ErrorCode, GatewayError, from_crypto_error, normalize_engine_error
from gateway.forwarding import RelayResponse, forward, read_whole
from gateway.metrics import record_crypto_failure
from gateway.settings import Settings

PATH = "/.well-known/ohttp-gateway"


def _keyring(request: Request) -> KeyRing:
    return request.app.state.keyring


async def key_configs(request: Request) -> Response:
    keyring = _keyring(request)
    ttl = max(0, int(keyring.expires_at() - time.time()))
    return Response(encode_key_configs(keyring.key_configs()), media_type=KEYS_MEDIA_TYPE,
                    headers={"cache-control": f"max-age={ttl}"})


Fields = tuple[tuple[str, str], ...]
_JSON: Fields = (("content-type", "application/json"),)
_NO_STORE = {"cache-control": "no-store"}


class _SingleShot:
    """Answers a `message/ohttp-req` with one `message/ohttp-res`."""

    def __init__(self, sealer: ResponseSealer) -> None:
        self._sealer = sealer

    def whole(self, status: int, headers: Fields, content: bytes) -> Response:
        sealed = self._sealer.seal(encode_response(BinaryResponse(status, headers, content)))
        return Response(sealed, media_type=RESPONSE_MEDIA_TYPE, headers=_NO_STORE)


class _Chunked:
    """Answers a `message/ohttp-chunked-req` with a `message/ohttp-chunked-res`."""

    def __init__(self, sealer: ChunkedResponseSealer) -> None:
        self._sealer = sealer

    def _head(self, status: int, headers: Fields) -> bytes:
        return self._sealer.start() + self._sealer.seal_chunk(
            encode_response_head(status, headers))

    def whole(self, status: int, headers: Fields, content: bytes) -> Response:
        body = encode_content_chunk(content) if content else b""
        sealed = self._head(status, headers) + self._sealer.seal_final(
            body + encode_response_end())
        return Response(sealed, media_type=CHUNKED_RESPONSE_MEDIA_TYPE, headers=_NO_STORE)

    def relay(self, request: Request, answer: EngineResponse) -> RelayResponse:
        """Seal each engine chunk (an SSE event) as its own OHTTP chunk, as produced."""
        sealer = self._sealer
        return RelayResponse(
            answer, request.state.disconnect_watcher, status=200,
            headers=[(b"content-type", CHUNKED_RESPONSE_MEDIA_TYPE.encode()),
                     (b"cache-control", b"no-store")],
            prefix=self._head(answer.status, _content_type(answer)),
            seal_chunk=lambda chunk: sealer.seal_chunk(encode_content_chunk(chunk)),
            seal_end=lambda: sealer.seal_final(encode_response_end()),
        )


async def gateway(request: Request) -> ASGIApp:
    settings: Settings = request.app.state.settings
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in (REQUEST_MEDIA_TYPE, CHUNKED_REQUEST_MEDIA_TYPE):
        raise GatewayError(ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                           f"expected {REQUEST_MEDIA_TYPE} or {CHUNKED_REQUEST_MEDIA_TYPE}")
    engine = request.app.state.engine_slot.get()
    body = await read_body(request, settings.max_body_bytes)
    try:
        inner, responder = _open(_keyring(request), body,
                                 media_type == CHUNKED_REQUEST_MEDIA_TYPE)
    except GatewayError:
        record_crypto_failure(request, "open_request")
        raise
    refusal = _refuse_inner(inner, settings)
    if refusal is not None:
        return responder.whole(refusal[0], _JSON, refusal[1])
    answer = await forward(engine, request, EngineRequest(
        inner.method.upper(), urlsplit(inner.path).path, inner.content,
        request_id=request.state.request_id))
    is_error = answer.status >= 400 and not answer.is_event_stream
    if isinstance(responder, _Chunked) and not is_error:
        return responder.relay(request, answer)
    return responder.whole(*await _read_answer(request, answer))


def _open(keyring: KeyRing, body: bytes, chunked: bool
          ) -> tuple[BinaryRequest, _SingleShot | _Chunked]:
    try:
        if chunked:
            opener = ChunkedRequestOpener(keyring)
            parts = opener.push(body)
            parts.append(opener.finish())
            return decode_request(b"".join(parts)), _Chunked(opener.response_sealer())
        inner, sealer = decapsulate_request(keyring, body)
        return decode_request(inner), _SingleShot(sealer)
    except EnclaveCryptoError as exc:
        raise from_crypto_error(exc, problem_type=KEY_CONFIG_PROBLEM_TYPE) from None


def _refuse_inner(inner: BinaryRequest, settings: Settings) -> tuple[int, bytes] | None:
    """An inner request the engine must not see: (status, JSON error body), else None."""
    route = (inner.method.upper(), urlsplit(inner.path).path)
    if route not in ENGINE_ROUTES:
        return 404, _error_json(GatewayError(ErrorCode.NOT_FOUND, "no such route"))
    if route[0] == "POST":
        try:
            parse_json_object(inner.content)
        except GatewayError as err:
            return err.status, _error_json(err)
    return None


def _error_json(err: GatewayError) -> bytes:
    return json.dumps(err.body()).encode()


def _content_type(answer: EngineResponse) -> Fields:
    return (("content-type", answer.content_type or "application/json"),)


async def _read_answer(request: Request, answer: EngineResponse) -> tuple[int, Fields, bytes]:
    """The whole engine answer (a stream is gathered: the client asked for one message)."""
    content = await read_whole(request, answer)
    if answer.status >= 400 and not answer.is_event_stream:
        content = normalize_engine_error(answer.status, content)
    return answer.status, _content_type(answer), content
