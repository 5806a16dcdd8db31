"""The Continuum dialect on the gateway: `POST /v1/secrets`, and `/v1/chat/completions`,
`/v1/completions`, `/v1/embeddings` whose prompt field is an encrypted string.

Plaintext stays plaintext where the seed says so (`id`, `model`, `usage`, `created`,
`/v1/models`); everything the prompt or the completion is made of travels sealed (see
`enclave/continuum.py`). Engine errors are returned with their stable code and a
generic message: an engine's message may quote the request, and this dialect's error
bodies are not encrypted.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from enclave import continuum, sse
from enclave.engine import EngineRequest
from enclave.errors import EnclaveCryptoError
from gateway.body import parse_json_object, read_body
from gateway.errors import (
    ErrorCode,
    GatewayError,
    error_body,
    from_crypto_error,
    json_response,
    normalize_engine_error,
)
from gateway.forwarding import RelayResponse, forward, read_whole
from gateway.metrics import record_crypto_failure, set_dialect

# A sealed 32-byte secret with its framing is well under 1 KiB.
MAX_SECRET_BODY = 4096


def is_continuum(path: str, payload: dict[str, Any]) -> bool:
    field = continuum.PROMPT_FIELDS.get(path)
    return field is not None and continuum.is_encrypted_field(payload.get(field))


async def register_secret(request: Request) -> Response:
    body = await read_body(request, MAX_SECRET_BODY)
    try:
        secret = continuum.open_secret(request.app.state.keyring, parse_json_object(body))
    except EnclaveCryptoError as exc:
        record_crypto_failure(request, "open_secret")
        raise from_crypto_error(exc) from None
    secret_id, expires = request.app.state.continuum_secrets.register(secret)
    return json_response(200, {"secret_id": secret_id, "expires_at": expires})


def _open_fields(request: Request, path: str, payload: dict[str, Any]
                 ) -> continuum.FieldCipher:
    """Decrypt every sealed top-level field in place; the cipher answers the response."""
    first = continuum.SealedField.parse(payload[continuum.PROMPT_FIELDS[path]])
    try:
        secret = request.app.state.continuum_secrets.get(first.secret_id)
    except continuum.UnknownSecretError:
        raise GatewayError(ErrorCode.UNKNOWN_SECRET,
                           "unknown or expired secret_id: register a new secret") from None
    cipher = continuum.FieldCipher(first.secret_id, secret, first.request_nonce)
    for name, value in list(payload.items()):
        if continuum.is_encrypted_field(value):
            try:
                payload[name] = json.loads(cipher.open_request_field(name, value))
            except EnclaveCryptoError as exc:
                record_crypto_failure(request, "open_request")
                raise from_crypto_error(exc) from None
            except ValueError:
                raise GatewayError(ErrorCode.INVALID_REQUEST,
                                   f"sealed field `{name}` is not JSON") from None
    return cipher


async def serve(request: Request, payload: dict[str, Any]) -> ASGIApp:
    set_dialect(request, "continuum")
    engine = request.app.state.engine_slot.get()
    path = request.url.path
    cipher = _open_fields(request, path, payload)
    answer = await forward(engine, request, EngineRequest(
        "POST", path, json.dumps(payload).encode(), request_id=request.state.request_id))
    result = continuum.RESULT_FIELDS[path]
    if not answer.is_event_stream:
        content = await read_whole(request, answer)
        if answer.status >= 400:
            return Response(_redacted(answer.status, content), status_code=answer.status,
                            media_type="application/json")
        obj = json.loads(content)
        obj[result] = cipher.seal_response(result, 0, json.dumps(obj.get(result)).encode(),
                                           final=True)
        return json_response(200, obj)
    return RelayResponse(answer, request.state.disconnect_watcher,
                         headers=[(b"content-type", b"text/event-stream")],
                         seal_chunk=_StreamSealer(cipher, result))


def _redacted(status: int, content: bytes) -> bytes:
    code = json.loads(normalize_engine_error(status, content))["error"]["code"]
    return json.dumps(error_body(ErrorCode(code), f"the engine rejected the request ({code})"
                                 )).encode()


class _StreamSealer:
    """Seals `choices` of each SSE event with a running sequence number; before
    `data: [DONE]` it adds the final message (empty choices, final flag) that lets the
    client tell a complete stream from a truncated one."""

    def __init__(self, cipher: continuum.FieldCipher, field: str) -> None:
        self._cipher, self._field = cipher, field
        self._seq = 0
        self._last: dict[str, Any] = {}

    def __call__(self, chunk: bytes) -> bytes:
        out = []
        for data in sse.data_of(chunk):
            if data == sse.DONE:
                out.append(self._event({**self._last, self._field: []}, final=True))
                out.append(sse.event(sse.DONE))
                continue
            obj = json.loads(data)
            self._last = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
            out.append(self._event(obj, final=False))
        return b"".join(out)

    def _event(self, obj: dict[str, Any], *, final: bool) -> bytes:
        plaintext = json.dumps(obj.get(self._field, [])).encode()
        obj = {**obj, self._field: self._cipher.seal_response(self._field, self._seq, plaintext,
                                                              final=final)}
        self._seq += 1
        return sse.event(json.dumps(obj).encode())
