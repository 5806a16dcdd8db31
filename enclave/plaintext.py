"""Identity dialects: the OpenAI API as it is, where something else protects it.

`enclava`: the platform API (seed 002) under `/api/v1/`, reachable only on the attested
TLS listener, whose key the attestation report binds; TLS authenticates every byte and
the end of every stream. `plaintext`: the development-only plaintext routes of the main
listener (`--insecure-plaintext`); without that flag it serves only the model list,
which is not confidential, and refuses every prompt.
"""

from __future__ import annotations

from enclave.dialect import (
    ControlRoute,
    EngineRoute,
    InnerRequest,
    OuterRequest,
    OuterResponse,
    StreamStart,
    json_response,
    plain_refusal,
)
from enclave.engine import MODELS, PROMPT_ROUTES
from enclave.errors import PlaintextRefused, RequestRefused
from enclave.http_fields import media_type
from enclave.plugin import DialectSetup
from enclave.wire_errors import ErrorCode

NAME = "plaintext"


class IdentityResponder:
    streams = True

    def whole(self, status: int, content_type: str, body: bytes) -> OuterResponse:
        return OuterResponse(status, (("content-type", content_type),), body)

    def error(self, status: int, error: bytes) -> OuterResponse:
        return json_response(status, error)

    def start(self, status: int, content_type: str) -> StreamStart:
        return StreamStart(status, (("content-type", content_type),))

    def chunk(self, events: bytes) -> bytes:
        return events

    def end(self) -> bytes:
        return b""


class IdentityServer:
    """Requests under `prefix` become engine requests under `/v1`."""

    def __init__(self, name: str, *, prefix: str = "/v1", allow_prompts: bool,
                 end_authenticated: bool) -> None:
        self.name = name
        self.end_authenticated = end_authenticated
        self._prefix = prefix
        self._allow_prompts = allow_prompts

    def accepts(self, request: OuterRequest) -> bool:
        return True

    def published_keys(self) -> dict[str, bytes]:
        return {}

    def engine_routes(self) -> tuple[EngineRoute, ...]:
        """The OpenAI routes, under this dialect's prefix."""
        return tuple(EngineRoute(method, self._prefix + path.removeprefix("/v1"))
                     for method, path in (MODELS, *PROMPT_ROUTES))

    def control_routes(self) -> tuple[ControlRoute, ...]:
        return ()

    def open(self, request: OuterRequest) -> tuple[InnerRequest, IdentityResponder]:
        kind = media_type(request.headers)
        if request.method == "POST" and kind and kind != "application/json":
            raise RequestRefused(
                "this route takes application/json (sealed with EHBP's "
                "Ehbp-Encapsulated-Key or Continuum's encrypted fields); OHTTP messages go "
                "to /.well-known/ohttp-gateway", code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                headers={"accept-post": "application/json"})
        if request.method != "GET" and not self._allow_prompts:
            raise PlaintextRefused()
        path = "/v1" + request.path.removeprefix(self._prefix)
        inner = InnerRequest(request.method, path, request.body)
        if request.method == "POST" and request.json_object is not None:
            inner = inner.with_payload(request.json_object, body=request.body)  # parsed once
        return inner, IdentityResponder()

    def refuse(self, error: RequestRefused) -> OuterResponse:
        return plain_refusal(error)


def platform_dialect() -> IdentityServer:
    return IdentityServer("enclava", prefix="/api/v1", allow_prompts=True,
                          end_authenticated=True)


def plaintext_dialect(*, insecure_plaintext: bool) -> IdentityServer:
    return IdentityServer(NAME, allow_prompts=insecure_plaintext,
                          end_authenticated=False)


def server(setup: DialectSetup) -> IdentityServer:
    return plaintext_dialect(insecure_plaintext=setup.insecure_plaintext)
