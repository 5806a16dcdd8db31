"""The gateway's Starlette application: the dialects, the route table built from them,
error handling and the engine's lifecycle.

Every engine-bound route is an `EngineEndpoint` over the dialects served at its path
(`gateway.endpoint`); the keys each dialect publishes are what the attestation report
binds. Control routes (key configurations, node keys, secret registration) are the
dialects' own sans-IO answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog
from nacl.signing import SigningKey
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

import enclave.continuum.pq as pq
from enclave import atoma, continuum, ehbp
from enclave.dialect import OuterRequest, OuterResponse, ServerDialect
from enclave.engine import CHAT, COMPLETIONS, EMBEDDINGS, MODELS
from enclave.errors import RequestRefused
from enclave.fleet import FleetSecrets
from enclave.keys import KeyRing
from enclave.ohttp.dialect import PATH as OHTTP_PATH
from enclave.ohttp.dialect import OhttpServer
from enclave.plaintext import plaintext_dialect
from enclave.replay import MemoryReplayCache, ReplayCache, ReplayGuard
from enclave.wire_errors import ErrorCode, error_body
from gateway import attestation_routes, limits, metrics, platform_docs
from gateway.admin import AdminApi
from gateway.body import read_body
from gateway.config import ServeConfig
from gateway.context import RequestContext
from gateway.endpoint import (
    MAX_CONCURRENT_OPENS,
    EngineEndpoint,
    Mount,
    Services,
    to_response,
)
from gateway.engine_slot import EngineFactory, EngineSlot
from gateway.errors import GatewayError, json_response
from gateway.platform_routes import Platform
from gateway.platform_store import PlatformStore

log = structlog.get_logger("cloister.gateway")
VERSION = importlib.metadata.version("cloister")


@dataclass(frozen=True)
class Dialects:
    """The dialects this gateway serves, made with its keys at start."""

    ohttp: OhttpServer
    ehbp: ehbp.EhbpServer
    atoma: atoma.AtomaServer
    continuum: continuum.ContinuumServer
    plaintext: ServerDialect

    @classmethod
    def create(cls, keyring: KeyRing, config: ServeConfig,
               fleet: FleetSecrets | None = None) -> Dialects:
        """Keys made here, or (in a fleet) derived from the fleet's seed."""
        signer, hybrid = atoma.NodeSigner(), None
        if fleet is not None:
            signer = atoma.NodeSigner(SigningKey(fleet.derive("atoma-signing-ed25519")))
            hybrid = pq.HybridKey(mlkem_seed=fleet.derive("continuum-mlkem768", 64),
                                  x25519_private=fleet.derive("continuum-x25519"))
        return cls(OhttpServer(keyring), ehbp.EhbpServer(keyring),
                   atoma.AtomaServer(keyring, signer),
                   continuum.ContinuumServer(keyring, continuum.SecretStore(
                       per_owner=config.limits.secrets_per_client), hybrid),
                   plaintext_dialect(insecure_plaintext=config.limits.insecure_plaintext))

    def all(self) -> tuple[ServerDialect, ...]:
        return (self.ohttp, self.ehbp, self.atoma, self.continuum, self.plaintext)

    def published_keys(self) -> dict[str, bytes]:
        keys: dict[str, bytes] = {}
        for dialect in self.all():
            keys.update(dialect.published_keys())
        return keys


Endpoint = Callable[[Request], Awaitable[Response]]


def _control(answer: Callable[[], OuterResponse], dialect: str) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        RequestContext.of(request.scope).dialect = dialect
        return to_response(answer())
    return endpoint


def _secrets_endpoint(dialect: continuum.ContinuumServer, services: Services,
                      buckets: limits.RateBuckets) -> Endpoint:
    """`POST /v1/secrets`, anonymous: rate-limited per client (small bursts), and each
    client holds a bounded number of secrets (`SecretStore`)."""
    async def register(request: Request) -> Response:
        RequestContext.of(request.scope).dialect = dialect.name
        client = limits.client_key(request.scope)
        wait = buckets.take(client)
        if wait is not None:
            services.metrics.rejected.labels(ErrorCode.RATE_LIMITED.value).inc()
            refused = to_response(dialect.refuse(GatewayError(
                ErrorCode.RATE_LIMITED, "too many secret registrations; retry later")))
            refused.headers["retry-after"] = str(wait)
            return refused
        try:
            body = await read_body(request, continuum.MAX_SECRET_BODY,
                                   timeout=services.body_timeout)
            outer = OuterRequest(request.method, request.url.path, (), body)
            return to_response(dialect.register_secret(outer, owner=client))
        except (RequestRefused, GatewayError) as err:
            services.metrics.crypto_failures.labels(dialect.name, "open_secret").inc()
            return to_response(dialect.refuse(err))
    return register


class _NodeLock:
    """`POST /v1/nodes/lock`: the node key, for a model the engine serves."""

    def __init__(self, dialect: atoma.AtomaServer, services: Services) -> None:
        self._dialect, self._services = dialect, services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dialect = self._dialect
        RequestContext.of(scope).dialect = dialect.name
        try:
            body = await read_body(Request(scope, receive), atoma.MAX_LOCK_BODY,
                                   timeout=self._services.body_timeout)
            answer = dialect.node_lock(body, self._services.slot.get().model_names())
        except GatewayError as err:
            answer = dialect.refuse(err)
        await to_response(answer)(scope, receive, send)


def _routes(dialects: Dialects, services: Services,
            reports: attestation_routes.ReportService | None,
            attested: attestation_routes.Attested | None, platform: Platform | None,
            metrics_token: str | None, secret_buckets: limits.RateBuckets) -> list[BaseRoute]:
    openai = EngineEndpoint([Mount(dialects.ehbp), Mount(dialects.continuum),
                             Mount(dialects.plaintext)], services)
    models = EngineEndpoint([Mount(dialects.ehbp), Mount(dialects.plaintext)], services)
    atoma_gate = platform.metered_gate if platform is not None else None
    confidential: ASGIApp = EngineEndpoint([Mount(dialects.atoma, atoma_gate)], services)
    lock: ASGIApp = _NodeLock(dialects.atoma, services)
    if platform is not None:  # accounts exist: every Atoma route takes a Bearer API key
        confidential = platform.bearer_required(confidential, dialects.atoma.name,
                                                dialects.atoma.refuse)
        lock = platform.bearer_required(lock, dialects.atoma.name, dialects.atoma.refuse)
    routes: list[BaseRoute] = [
        Route(MODELS[1], models, methods=["GET"]),
        *[Route(path, openai, methods=["POST"]) for _, path in (CHAT, COMPLETIONS, EMBEDDINGS)],
        Route(OHTTP_PATH, _control(dialects.ohttp.key_configs, "control"), methods=["GET"]),
        Route(OHTTP_PATH, EngineEndpoint([Mount(dialects.ohttp)], services), methods=["POST"]),
        Route(ehbp.KEYS_PATH, _control(dialects.ehbp.key_configs, "control"), methods=["GET"]),
        Route(atoma.NODE_PATH, _control(dialects.atoma.node_info, "control"), methods=["GET"]),
        *[Route(path, confidential, methods=["POST"]) for path in atoma.ENGINE_PATHS],
        Route(atoma.LOCK_PATH, lock, methods=["POST"]),
        Route(continuum.SECRETS_PATH, _secrets_endpoint(dialects.continuum, services,
                                                        secret_buckets),
              methods=["POST"]),
        Route(continuum.HYBRID_KEY_PATH, _control(dialects.continuum.hybrid_key, "control"),
              methods=["GET"]),
        Route(attestation_routes.PATH, attestation_routes.report_endpoint(
            reports, services.metrics), methods=["GET"]),
        Route(attestation_routes.REFERENCE_VALUES_PATH,
              attestation_routes.reference_values_endpoint(attested), methods=["GET"]),
    ]
    if metrics_token is not None:
        routes.append(Route("/metrics", metrics.scrape_endpoint(services.metrics,
                                                                token=metrics_token),
                            methods=["GET"]))
    return routes


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(
        exc.status_code, ErrorCode.INVALID_REQUEST)
    message = {404: "no such route", 405: "method not allowed on this route"}.get(
        exc.status_code, "invalid request")
    return json_response(exc.status_code, error_body(code, message))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # The type only: an exception's text may quote request content.
    log.error("unhandled_error", error_type=type(exc).__name__)
    return json_response(500, error_body(ErrorCode.INTERNAL_ERROR, "internal error"))


def create_app(
    config: ServeConfig,
    engine_factory: EngineFactory,
    *,
    on_engine_failure: Callable[[], None] | None = None,
    attestation: attestation_routes.Attested | None = None,
    platform_store: PlatformStore | None = None,
    tls_spki_sha256: bytes | None = None,
    clock: Callable[[], float] = time.time,
    replay_cache: ReplayCache | None = None,
    admin: AdminApi | None = None,
    fleet: FleetSecrets | None = None,
) -> Starlette:
    """Build the gateway. The engine starts in the lifespan, in the background.

    `attestation` is the evidence providers and the workload manifest; without it the
    report endpoint answers 503 and no client that verifies will talk to this gateway.
    """
    slot = EngineSlot(engine_factory, on_failure=on_engine_failure)
    gateway_metrics = metrics.GatewayMetrics(slot.current)
    # Keys are made here, in the gateway process, after nothing but configuration has
    # been read; the engine's processes are spawned and never see them.
    keys, limits_, timeouts = config.keys, config.limits, config.timeouts
    side = config.side_channels
    keyring = KeyRing(rotation_seconds=keys.key_rotation_seconds,
                      grace_seconds=keys.key_grace_seconds,
                      on_rotate=lambda _key: gateway_metrics.key_rotations.inc(), clock=clock,
                      derive=fleet.hpke_key if fleet is not None else None)
    dialects = Dialects.create(keyring, config, fleet)
    services = Services(
        slot=slot, metrics=gateway_metrics, max_body_bytes=limits_.max_body_bytes,
        body_timeout=timeouts.body_timeout, opens=asyncio.Semaphore(MAX_CONCURRENT_OPENS),
        admission=limits.Admission(max_in_flight=limits_.max_in_flight,
                                   max_per_client=limits_.max_per_client,
                                   max_engine_queue=limits_.max_engine_queue),
        padding=side.padding, stream_interval=side.stream_interval_ms / 1000,
        max_tokens=limits_.max_tokens, write_timeout=timeouts.write_timeout,
        cache_salt_key=fleet.derive("cache-salt") if fleet is not None else os.urandom(32),
        constant_rate=side.constant_rate,
        replay=ReplayGuard(
            replay_cache if replay_cache is not None
            else MemoryReplayCache(config.replay.replay_cache_entries),
            horizon=lambda: keyring.expires_at() + keys.key_grace_seconds,
            window=config.replay.replay_window_seconds, clock=clock))
    token_file = config.metrics.metrics_token_file
    metrics_token = token_file.read_text().strip() if token_file is not None else None

    def bound_keys() -> dict[str, bytes]:
        keys = dialects.published_keys()
        if tls_spki_sha256 is not None:
            keys["tls-spki-sha256"] = tls_spki_sha256
        return keys

    reports = (attestation_routes.ReportService(attestation, keyring, bound_keys, now=clock)
               if attestation is not None else None)
    platform = Platform(platform_store, services) if platform_store is not None else None
    admin_routes = admin.routes() if admin is not None else []

    async def health(request: Request) -> Response:
        """Liveness: the process serves HTTP and its engine has not failed."""
        if slot.failed:
            return GatewayError(ErrorCode.ENGINE_FAILED, "the inference engine failed"
                                ).response()
        return json_response(200, {"status": "ok"})

    async def ready(request: Request) -> Response:
        """Readiness: 200 only once the engine answers a health check."""
        engine = slot.get()
        try:
            await engine.check_health()
        except Exception:  # noqa: BLE001 - any failure means not ready
            return GatewayError(ErrorCode.ENGINE_NOT_READY, "the engine is not healthy"
                                ).response()
        return json_response(200, {"status": "ready", "models": engine.model_names()})

    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        gateway_metrics.rejected.labels(exc.code.value).inc()
        return exc.response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        slot.start()
        try:
            yield
        finally:
            if reports is not None:
                reports.close()
            await slot.stop()

    public = [Route("/health", health, methods=["GET"]), Route("/ready", ready, methods=["GET"]),
              *_routes(dialects, services, reports, attestation, platform,
                       metrics_token, limits.RateBuckets(
                           rate=limits_.secret_registrations_per_second,
                           burst=limits_.secret_registration_burst))]

    def listener(routes: list[BaseRoute], *, owns_lifespan: bool) -> Starlette:
        return Starlette(
            routes=routes, lifespan=lifespan if owns_lifespan else None,
            middleware=[Middleware(metrics.GatewayMiddleware, metrics=gateway_metrics)],
            exception_handlers={GatewayError: gateway_error, HTTPException: _http_error,
                                Exception: _unexpected_error})

    app = listener(public, owns_lifespan=True)
    # The attested TLS listener is an app of its own: the platform and admin APIs exist
    # there by construction, never on the public listener (no scheme or header check).
    tls_only = [*(platform.routes() + platform_docs.docs_routes(VERSION)
                  if platform is not None else []), *admin_routes]
    tls_app = listener([*public, *tls_only], owns_lifespan=False) if tls_only else app
    # What tests and the CLI look at; request handling never reads these.
    for each in {app, tls_app}:
        each.state.config = config
        each.state.metrics = gateway_metrics
        each.state.engine_slot = slot
        each.state.keyring = keyring
        each.state.dialects = dialects
        each.state.reports = reports
        each.state.tls_app = tls_app
    return app
