"""The Atoma confidential envelope on the gateway (see `enclave/atoma.py`).

    GET  /v1/confidential/node                 the node's X25519 and Ed25519 public keys
    POST /v1/confidential/chat/completions     (and /completions, /embeddings)
Errors are named like the seed's: `InvalidBody` (400) for a malformed, stale or
unopenable envelope or a missing or non-boolean `stream`; `InternalError` (500) when
inference fails.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from enclave import atoma, sse
from enclave.engine import EngineRequest
from gateway.body import read_body
from gateway.errors import json_response
from gateway.forwarding import RelayResponse, forward, read_whole
from gateway.metrics import record_crypto_failure
from gateway.settings import Settings

PREFIX = "/v1/confidential"
ENGINE_PATHS = {f"{PREFIX}/chat/completions": "/v1/chat/completions",
                f"{PREFIX}/completions": "/v1/completions",
                f"{PREFIX}/embeddings": "/v1/embeddings"}


def _error(status: int, kind: str, code: str, message: str) -> Response:
    return json_response(status, {"error": {"type": kind, "code": code, "message": message}})


def _invalid(message: str) -> Response:
    return _error(400, atoma.InvalidBody.kind, atoma.InvalidBody.code, message)


def _internal() -> Response:
    return _error(500, "InternalError", "internal_error", "inference failed")


async def node(request: Request) -> Response:
    keyring = request.app.state.keyring
    signer: atoma.NodeSigner = request.app.state.node_signer
    return json_response(200, {
        "node_dh_public_key": atoma.b64(keyring.current().public_key),
        "signing_public_key": atoma.b64(signer.public_key),
        "signature_scheme": "ed25519", "expires_at": int(keyring.expires_at())})


async def confidential(request: Request) -> ASGIApp:
    settings: Settings = request.app.state.settings
    engine = request.app.state.engine_slot.get()
    body = await read_body(request, settings.max_body_bytes)
    try:
        envelope = atoma.ConfidentialRequest.parse(json.loads(body))
        plaintext, sealer = atoma.open_request(envelope, request.app.state.keyring,
                                               request.app.state.node_signer)
        inner = json.loads(plaintext)
        if not isinstance(inner, dict):
            raise atoma.InvalidBody("the decrypted body must be a JSON object")
    except atoma.InvalidBody as exc:
        record_crypto_failure(request, "open_request")
        request.app.state.metrics.rejected.labels(atoma.InvalidBody.code).inc()
        return _invalid(str(exc))
    except ValueError:
        request.app.state.metrics.rejected.labels(atoma.InvalidBody.code).inc()
        return _invalid("the body is not valid JSON")
    inner["stream"] = envelope.stream
    inner.setdefault("model", envelope.model_name)
    answer = await forward(engine, request, EngineRequest(
        "POST", ENGINE_PATHS[request.url.path], json.dumps(inner).encode(),
        request_id=request.state.request_id))
    if answer.status >= 500:
        await answer.aclose()
        request.state.disconnect_watcher.close()
        return _internal()
    if not answer.is_event_stream:
        content = await read_whole(request, answer)
        return json_response(answer.status, sealer.seal(content, usage=_usage(content)))
    return RelayResponse(answer, request.state.disconnect_watcher,
                         headers=[(b"content-type", b"text/event-stream")],
                         seal_chunk=lambda event: _seal_event(sealer, event))


def _usage(content: bytes) -> Any:
    try:
        return json.loads(content).get("usage")
    except (ValueError, AttributeError):
        return None


def _seal_event(sealer: atoma.ResponseSealer, chunk: bytes) -> bytes:
    """Each SSE event's JSON is sealed into an Atoma response object; [DONE] stays."""
    out = []
    for data in sse.data_of(chunk):
        if data == sse.DONE:
            out.append(sse.event(sse.DONE))
            continue
        sealed = sealer.seal(data, usage=_usage(data))
        out.append(sse.event(json.dumps(sealed).encode()))
    return b"".join(out)
