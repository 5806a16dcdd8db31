"""EHBP on the gateway: any `/v1/*` request that carries `Ehbp-Encapsulated-Key`.

Bodies are encrypted, headers and status are not (that is EHBP's design); the engine's
answer is sealed frame by frame as it is produced. See `enclave/ehbp.py`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from enclave import ehbp
from enclave.engine import EngineRequest
from enclave.errors import EnclaveCryptoError
from enclave.ohttp import encode_key_configs
from gateway.body import parse_json_object, read_body
from gateway.errors import GatewayError, from_crypto_error, normalize_engine_error
from gateway.forwarding import RelayResponse, forward, read_whole
from gateway.metrics import record_crypto_failure, set_dialect
from gateway.settings import Settings


def has_ehbp(request: Request) -> bool:
    return ehbp.ENCAPSULATED_KEY_HEADER.lower() in request.headers


async def keys(request: Request) -> Response:
    config = ehbp.key_config(request.app.state.keyring.current())
    return Response(encode_key_configs([config]), media_type="application/ohttp-keys",
                    headers={"cache-control": "max-age=300"})


async def serve(request: Request) -> ASGIApp:
    set_dialect(request, "ehbp")
    settings: Settings = request.app.state.settings
    engine = request.app.state.engine_slot.get()
    body = await read_body(request, settings.max_body_bytes)
    try:
        plaintext, sealer = ehbp.open_request(
            request.app.state.keyring, request.headers[ehbp.ENCAPSULATED_KEY_HEADER], body)
    except EnclaveCryptoError as exc:
        record_crypto_failure(request, "open_request")
        raise from_crypto_error(exc, problem_type=ehbp.KEY_CONFIG_PROBLEM_TYPE) from None
    nonce = {ehbp.RESPONSE_NONCE_HEADER: sealer.nonce_header, "cache-control": "no-store"}
    if request.method == "POST":
        try:
            parse_json_object(plaintext)
        except GatewayError as err:  # the error body travels encrypted like any answer
            return Response(sealer.seal(err.response().body), status_code=err.status,
                            media_type="application/json", headers=nonce)
    answer = await forward(engine, request, EngineRequest(
        request.method, request.url.path, plaintext, request_id=request.state.request_id))
    if answer.status >= 400 and not answer.is_event_stream:
        content = normalize_engine_error(answer.status, await read_whole(request, answer))
        return Response(sealer.seal(content), status_code=answer.status,
                        media_type="application/json", headers=nonce)
    headers = [(b"content-type", (answer.content_type or "application/json").encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in nonce.items()]
    return RelayResponse(answer, request.state.disconnect_watcher, headers=headers,
                         seal_chunk=sealer.seal)
