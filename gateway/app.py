"""The gateway's Starlette application: routes, error handling, engine lifecycle."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from attestation.providers import CpuProvider, GpuProvider
from enclave import atoma, continuum, ehbp
from enclave.engine import CHAT, COMPLETIONS, EMBEDDINGS, MODELS, Engine, EngineRequest
from enclave.keys import KeyRing
from gateway import (
    atoma_routes,
    attestation_routes,
    continuum_routes,
    ehbp_routes,
    limits,
    metrics,
    ohttp_routes,
    platform_routes,
)
from gateway.body import parse_json_object, read_body
from gateway.engine_slot import EngineFactory, EngineSlot
from gateway.errors import ErrorCode, GatewayError, error_body, json_response
from gateway.forwarding import forward, relay_plaintext
from gateway.platform_store import PlatformStore
from gateway.settings import Settings

log = structlog.get_logger("cloister.gateway")


def _slot(request: Request) -> EngineSlot:
    return request.app.state.engine_slot


async def health(request: Request) -> Response:
    """Liveness: the process serves HTTP and its engine has not failed."""
    if _slot(request).failed:
        return GatewayError(ErrorCode.ENGINE_FAILED, "the inference engine failed").response()
    return json_response(200, {"status": "ok"})


async def ready(request: Request) -> Response:
    """Readiness: 200 only once the engine answers a health check."""
    engine = _slot(request).get()
    try:
        await engine.check_health()
    except Exception:  # noqa: BLE001 - any failure means not ready
        return GatewayError(ErrorCode.ENGINE_NOT_READY, "the engine is not healthy").response()
    return json_response(200, {"status": "ready", "models": engine.model_names()})


async def list_models(request: Request) -> ASGIApp:
    """`GET /v1/models`: plaintext by design (model metadata is not confidential)."""
    if ehbp_routes.has_ehbp(request):
        return await ehbp_routes.serve(request)
    engine = _slot(request).get()
    answer = await forward(engine, request, EngineRequest(*MODELS))
    return await relay_plaintext(request, answer)


async def openai_plaintext(request: Request) -> ASGIApp:
    """The OpenAI routes: EHBP-encrypted bodies, or plaintext (refused unless
    `--insecure-plaintext`, for development)."""
    if ehbp_routes.has_ehbp(request):
        return await ehbp_routes.serve(request)
    settings: Settings = request.app.state.settings
    body = await read_body(request, settings.max_body_bytes)
    payload = parse_json_object(body)
    if continuum_routes.is_continuum(request.url.path, payload):
        return await continuum_routes.serve(request, payload)
    if not settings.insecure_plaintext:
        raise GatewayError(
            ErrorCode.PLAINTEXT_REFUSED,
            "plaintext prompts are refused: send requests through an encrypted channel "
            "(for example `cloister proxy`)",
        )
    engine = _slot(request).get()
    inner = EngineRequest("POST", request.url.path, body, request_id=request.state.request_id)
    answer = await forward(engine, request, inner)
    return await relay_plaintext(request, answer)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    request.app.state.metrics.rejected.labels(exc.code.value).inc()
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(
        exc.status_code, ErrorCode.INVALID_REQUEST
    )
    message = {404: "no such route", 405: "method not allowed on this route"}.get(
        exc.status_code, "invalid request"
    )
    return json_response(exc.status_code, error_body(code, message))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # The type only: an exception's text may quote request content.
    log.error("unhandled_error", error_type=type(exc).__name__)
    return json_response(500, error_body(ErrorCode.INTERNAL_ERROR, "internal error"))


class RequestIdMiddleware:
    """Gives every request an id (`request.state.request_id`, `X-Request-Id`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


def _limited(factory: EngineFactory, settings: Settings) -> EngineFactory:
    if settings.max_tokens is None:
        return factory

    @contextlib.asynccontextmanager
    async def limited() -> AsyncIterator[Engine]:
        async with factory() as engine:
            yield limits.TokenLimitedEngine(engine, settings.max_tokens)  # type: ignore[arg-type]

    return limited


def create_app(
    settings: Settings,
    engine_factory: EngineFactory,
    *,
    on_engine_failure: Callable[[], None] | None = None,
    attestation: tuple[CpuProvider, GpuProvider] | None = None,
    platform_store: PlatformStore | None = None,
    tls_spki_sha256: bytes | None = None,
) -> Starlette:
    """Build the gateway. The engine starts in the lifespan, in the background.

    `attestation` is the evidence providers; without them the report endpoint answers
    503 and no client that verifies will talk to this gateway.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        slot = EngineSlot(_limited(engine_factory, settings), on_failure=on_engine_failure)
        app.state.engine_slot = slot
        slot.start()
        try:
            yield
        finally:
            await slot.stop()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route(MODELS[1], list_models, methods=["GET"]),
        Route(CHAT[1], openai_plaintext, methods=["POST"]),
        Route(COMPLETIONS[1], openai_plaintext, methods=["POST"]),
        Route(EMBEDDINGS[1], openai_plaintext, methods=["POST"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route(ohttp_routes.PATH, ohttp_routes.key_configs, methods=["GET"]),
        Route(ohttp_routes.PATH, ohttp_routes.gateway, methods=["POST"]),
        Route(attestation_routes.PATH, attestation_routes.report, methods=["GET"]),
        *platform_routes.ROUTES,
        Route(ehbp.KEYS_PATH, ehbp_routes.keys, methods=["GET"]),
        Route("/v1/secrets", continuum_routes.register_secret, methods=["POST"]),
        Route(f"{atoma_routes.PREFIX}/node", atoma_routes.node, methods=["GET"]),
        *[Route(path, atoma_routes.confidential, methods=["POST"])
          for path in atoma_routes.ENGINE_PATHS],
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics.GatewayMetrics(app)
    # Keys are made here, in the gateway process, after nothing but configuration has
    # been read; the engine's processes are spawned and never see them.
    app.state.keyring = KeyRing(rotation_seconds=settings.key_rotation_seconds,
                                grace_seconds=settings.key_grace_seconds,
                                on_rotate=lambda _key: app.state.metrics.key_rotations.inc())
    app.state.platform_store = platform_store
    app.state.tls_spki_sha256 = tls_spki_sha256
    app.state.node_signer = atoma.NodeSigner()
    app.state.continuum_secrets = continuum.SecretStore()
    app.state.reports = (attestation_routes.ReportService(*attestation, app.state.keyring,
                                                          app.state.node_signer,
                                                          tls_spki_sha256=tls_spki_sha256)
                         if attestation is not None else None)
    app.add_middleware(limits.AdmissionMiddleware, max_in_flight=settings.max_in_flight,
                       max_per_client=settings.max_per_client,
                       max_engine_queue=settings.max_engine_queue)
    app.add_middleware(metrics.MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
