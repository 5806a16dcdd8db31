"""The gateway's Starlette application: the dialects, the route table built from them,
error handling and the engine's lifecycle.

The dialects come from one registry (`enclave.registry`) and declare their own routes:
every engine-bound path is an `EngineEndpoint` over the dialects served there
(`gateway.endpoint`), every control route (key configurations, node keys, secret
registration) one `_Control` over the dialect's sans-IO answer. The keys each dialect
publishes are what the attestation report binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from attestation.collateral import RefreshedCollateral
from attestation.workload import workload_digest
from enclave.dialect import ControlCall, ControlRoute, EngineRoute, OuterRequest, ServerDialect
from enclave.errors import RequestRefused
from enclave.fleet import FleetSecrets
from enclave.keys import KeyRing
from enclave.plugin import DialectSetup
from enclave.receipts import BOUND_KEY as RECEIPT_KEY
from enclave.receipts import ReceiptIssuer, ReceiptSigner
from enclave.registry import DIALECTS, Dialect
from enclave.replay import MemoryReplayCache, ReplayCache, ReplayGuard
from enclave.tlog.entries import receipt_entry, release_entry
from enclave.wire_errors import ErrorCode, error_body
from gateway import attestation_routes, limits, metrics, platform_docs, tlog_routes
from gateway.admin import AdminApi
from gateway.body import read_body
from gateway.collateral_fetch import REFRESH_EVERY
from gateway.config import ServeConfig
from gateway.context import CONTROL, RequestContext
from gateway.endpoint import (
    MAX_CONCURRENT_OPENS,
    EngineEndpoint,
    Mount,
    Services,
    to_response,
)
from gateway.engine_slot import EngineFactory, EngineSlot
from gateway.errors import GatewayError, json_response
from gateway.known_answer import KnownAnswer, expected_answers
from gateway.platform_routes import Platform
from gateway.platform_store import PlatformStore
from gateway.tlog import BOUND_KEY as LOG_KEY
from gateway.tlog import TransparencyLog

log = structlog.get_logger("cloister.gateway")
VERSION = importlib.metadata.version("cloister")


@dataclass(frozen=True)
class Dialects:
    """The dialects this gateway serves (`enclave.registry`, in its order), made with its
    keys at start: here, or (in a fleet) derived from the fleet's seed."""

    servers: tuple[ServerDialect, ...]

    @classmethod
    def create(cls, keyring: KeyRing, config: ServeConfig,
               fleet: FleetSecrets | None = None,
               registry: Sequence[Dialect] = DIALECTS) -> Dialects:
        setup = DialectSetup(keyring, fleet.derive if fleet is not None else None,
                             secrets_per_client=config.limits.secrets_per_client,
                             insecure_plaintext=config.limits.insecure_plaintext)
        return cls(tuple(entry.server(setup) for entry in registry))

    def all(self) -> tuple[ServerDialect, ...]:
        return self.servers

    def named(self, name: str) -> ServerDialect:
        return next(d for d in self.servers if d.name == name)

    def published_keys(self) -> dict[str, bytes]:
        keys: dict[str, bytes] = {}
        for dialect in self.all():
            keys.update(dialect.published_keys())
        return keys


class _Control:
    """The one control endpoint: a dialect's own answer (`ControlRoute`), after what the
    route asks of the gateway (the client's rate bucket, a bounded body). Key lookups,
    which read no body, are counted as `control`; the rest under the dialect."""

    def __init__(self, dialect: ServerDialect, route: ControlRoute, services: Services,
                 buckets: limits.RateBuckets) -> None:
        self._dialect, self._route, self._services = dialect, route, services
        self._buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dialect, route, services = self._dialect, self._route, self._services
        request = Request(scope, receive)
        RequestContext.of(scope).dialect = dialect.name if route.max_body else CONTROL
        client = limits.client_key(scope)
        try:
            if route.rate_limited:
                wait = self._buckets.take(client)
                if wait is not None:
                    services.metrics.rejected.labels(ErrorCode.RATE_LIMITED.value).inc()
                    refused = to_response(dialect.refuse(GatewayError(
                        ErrorCode.RATE_LIMITED, "too many requests; retry later")))
                    refused.headers["retry-after"] = str(wait)
                    await refused(scope, receive, send)
                    return
            body = (await read_body(request, route.max_body, timeout=services.body_timeout)
                    if route.max_body else b"")
            outer = OuterRequest(request.method, request.url.path, (), body)
            answer = route.answer(ControlCall(
                outer, client, lambda: services.slot.get().model_names()))
        except GatewayError as err:  # the gateway's own (a body too large or too slow)
            answer = dialect.refuse(err)
        except RequestRefused as err:  # the dialect's: it did not open
            services.metrics.crypto_failures.labels(dialect.name, "control").inc()
            answer = dialect.refuse(err)
        await to_response(answer)(scope, receive, send)


class _AttestedTlsOnly:
    """A credential route on the public listener of a gateway with accounts: refused
    before the request's key is read, so that no one sends one where the wire is not the
    attested TLS, and nothing here answers whether a copied key is good."""

    def __init__(self, dialect: ServerDialect, services: Services) -> None:
        self._dialect, self._services = dialect, services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        RequestContext.of(scope).dialect = self._dialect.name
        self._services.metrics.rejected.labels(ErrorCode.ATTESTED_TLS_REQUIRED.value).inc()
        refusal = GatewayError(ErrorCode.ATTESTED_TLS_REQUIRED,
                               "with accounts, this route is served only on the attested "
                               "TLS listener (https://)")
        await to_response(self._dialect.refuse(refusal))(scope, receive, send)


def _known_answer_failed(known: KnownAnswer) -> GatewayError:
    return GatewayError(ErrorCode.KNOWN_ANSWER_FAILED,
                        f"the engine failed its known-answer check ({known.reason})")


def _vouched_by(known: KnownAnswer, endpoint: Callable[[Request], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
    """A report route that vouches for this gateway only while its engine gives the known
    answer: after a failed check no client and no keyholder gets its keys attested."""
    async def vouched(request: Request) -> Response:
        if known.settled.is_set() and not known.ok:
            raise _known_answer_failed(known)
        return await endpoint(request)
    return vouched


def _routes(dialects: Dialects, services: Services, known: KnownAnswer,
            reports: attestation_routes.ReportService | None,
            attested: attestation_routes.Attested | None, platform: Platform | None,
            metrics_token: str | None, buckets: limits.RateBuckets, *,
            attested_tls: bool) -> list[BaseRoute]:
    """Every dialect's routes, from what each declares: one engine endpoint per path over
    the dialects that share it (asked in the registry's order), one control endpoint per
    control route. A route that needs a credential takes the platform's Bearer API key
    where the gateway keeps accounts, and only on the attested TLS listener
    (`attested_tls`); the public listener refuses it (`_AttestedTlsOnly`)."""
    shared: dict[tuple[str, str], list[tuple[ServerDialect, EngineRoute]]] = {}
    for dialect in dialects.all():
        for route in dialect.engine_routes():
            shared.setdefault((route.method, route.path), []).append((dialect, route))
    routes: list[BaseRoute] = []
    for (method, path), served in shared.items():
        credential = [d for d, r in served if r.credential]
        gate = platform.metered_gate if platform is not None else None
        app: ASGIApp = EngineEndpoint([Mount(d, gate if r.credential else None)
                                       for d, r in served], services)
        if platform is not None and credential:  # accounts exist: a Bearer key first
            app = (platform.bearer_required(app, credential[0].name, credential[0].refuse)
                   if attested_tls else _AttestedTlsOnly(credential[0], services))
        routes.append(Route(path, app, methods=[method]))
    for dialect in dialects.all():
        for control in dialect.control_routes():
            app = _Control(dialect, control, services, buckets)
            if platform is not None and control.credential:
                app = (platform.bearer_required(app, dialect.name, dialect.refuse)
                       if attested_tls else _AttestedTlsOnly(dialect, services))
            routes.append(Route(control.path, app, methods=[control.method]))
    routes += [
        Route(attestation_routes.PATH, _vouched_by(known, attestation_routes.report_endpoint(
            reports, services.metrics)), methods=["GET"]),
        Route(attestation_routes.REFERENCE_VALUES_PATH,
              attestation_routes.reference_values_endpoint(attested), methods=["GET"]),
    ]
    if metrics_token is not None:
        routes.append(Route("/metrics", metrics.scrape_endpoint(services.metrics,
                                                                token=metrics_token),
                            methods=["GET"]))
    return routes


# Browsers may call the public listener from any page: it honours no ambient credential
# (no cookies; API keys are taken on the attested TLS listener only), and what a page can
# read is public (keys, reports) or sealed to a key the page itself chose.
PUBLIC_CORS = (Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"],
                          allow_headers=["*"], expose_headers=["*"], max_age=600),)


def _receipt_issuer(attestation: attestation_routes.Attested | None,
                    fleet: FleetSecrets | None, keyring: KeyRing,
                    clock: Callable[[], float], tlog: TransparencyLog) -> ReceiptIssuer:
    """The gateway's receipts: a key made here (a fleet's replicas derive one key, so a
    receipt verifies whichever replica answered), saying the attested workload and the
    digests of its models."""
    key = (Ed25519PrivateKey.from_private_bytes(fleet.derive("receipt-ed25519"))
           if fleet is not None else None)
    manifest = attestation.workload if attestation is not None else {}
    models = manifest.get("engine", {}).get("models", [])
    return ReceiptIssuer(
        ReceiptSigner(key), workload=workload_digest(manifest).hex() if manifest else "",
        model_digests={str(m.get("name")): str(m.get("digest") or "") for m in models},
        epoch=lambda: keyring.current().key_id, clock=clock,
        logged=lambda wire: tlog.append(receipt_entry(wire)))


async def _renew(collateral: RefreshedCollateral) -> None:
    """The vendors' collateral, renewed before it is due, off the report path."""
    while True:
        await asyncio.sleep(REFRESH_EVERY)
        await asyncio.to_thread(collateral.refresh)


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


@dataclass(frozen=True)
class Gateway:
    """What `create_app` makes: the public listener's app (this value is that ASGI app,
    and owns the lifespan: engine, key rotation), the attested TLS listener's (the same
    app where there is no platform or admin API), and what the command line and tests
    look at. Request handling never reads these."""

    app: Starlette
    tls_app: Starlette
    config: ServeConfig
    metrics: metrics.GatewayMetrics
    engine_slot: EngineSlot
    keyring: KeyRing
    dialects: Dialects
    reports: attestation_routes.ReportService | None
    log: TransparencyLog
    receipts: ReceiptIssuer
    known_answer: KnownAnswer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def router(self) -> Router:
        return self.app.router


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
    registry: Sequence[Dialect] = DIALECTS,
    transparency_log: TransparencyLog | None = None,
) -> Gateway:
    """Build the gateway. The engine starts in the lifespan, in the background.

    `attestation` is the evidence providers and the workload manifest; without it the
    report endpoint answers 503 and no client that verifies will talk to this gateway.
    `transparency_log` (`gateway.tlog`): where receipts and release statements are
    logged (default: in memory, for this process's life); its key is bound in the report
    and its routes served.
    """
    tlog = transparency_log if transparency_log is not None else TransparencyLog.in_memory()
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
    dialects = Dialects.create(keyring, config, fleet, registry)
    receipts = _receipt_issuer(attestation, fleet, keyring, clock, tlog)
    services = Services(
        receipts=receipts,
        slot=slot, metrics=gateway_metrics, max_body_bytes=limits_.max_body_bytes,
        body_timeout=timeouts.body_timeout, opens=asyncio.Semaphore(MAX_CONCURRENT_OPENS),
        admission=limits.Admission(max_in_flight=limits_.max_in_flight,
                                   max_per_client=limits_.max_per_client,
                                   max_engine_queue=limits_.max_engine_queue),
        padding=side.padding, stream_interval=side.stream_interval_ms / 1000,
        max_tokens=limits_.max_tokens, write_timeout=timeouts.write_timeout,
        cache_salt_key=fleet.derive("cache-salt") if fleet is not None else os.urandom(32),
        constant_rate=side.constant_rate,
        forwarding=limits.UntrustedForwarding(
            trusted=config.listeners.forwarded_allow_ips is not None),
        replay=ReplayGuard(
            replay_cache if replay_cache is not None
            else MemoryReplayCache(config.replay.replay_cache_entries),
            horizon=keyring.accepted_until,
            window=config.replay.replay_window_seconds, clock=clock))
    known = KnownAnswer(
        expected_answers(attestation.workload if attestation is not None else {}),
        period=config.model.known_answer_seconds,
        count=lambda result: gateway_metrics.known_answer_checks.labels(result).inc(),
        withhold=slot.withhold)
    token_file = config.metrics.metrics_token_file
    metrics_token = token_file.read_text().strip() if token_file is not None else None

    def bound_keys() -> dict[str, bytes]:
        keys = dialects.published_keys()
        if tls_spki_sha256 is not None:
            keys["tls-spki-sha256"] = tls_spki_sha256
        keys[RECEIPT_KEY] = receipts.signer.public_key
        keys[LOG_KEY] = tlog.public_key
        return keys

    reports = (attestation_routes.ReportService(attestation, keyring, bound_keys, now=clock)
               if attestation is not None else None)
    platform = Platform(platform_store, services) if platform_store is not None else None
    admin_routes = admin.routes() if admin is not None else []

    async def health(request: Request) -> Response:
        """Liveness: the process serves HTTP and its engine has not failed (nor failed
        its known-answer check)."""
        if slot.failed:
            return GatewayError(ErrorCode.ENGINE_FAILED, "the inference engine failed"
                                ).response()
        if known.settled.is_set() and not known.ok:
            return _known_answer_failed(known).response()
        return json_response(200, {"status": "ok"})

    async def ready(request: Request) -> Response:
        """Readiness: 200 only once the engine answers a health check and its known
        answer (`gateway.known_answer`)."""
        engine = slot.get()
        try:
            await engine.check_health()
        except Exception:  # noqa: BLE001 - any failure means not ready
            return GatewayError(ErrorCode.ENGINE_NOT_READY, "the engine is not healthy"
                                ).response()
        if not known.settled.is_set():
            return GatewayError(ErrorCode.ENGINE_NOT_READY, "the known-answer check has "
                                "not run yet", headers={"Retry-After": "1"}).response()
        return json_response(200, {"status": "ready", "models": engine.model_names()})

    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        gateway_metrics.rejected.labels(exc.code.value).inc()
        return exc.response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        slot.start()
        released = [release_entry(json.loads(s)) for s in
                    (attestation.statements if attestation is not None else ())]
        await asyncio.to_thread(tlog.append_once, released)
        background = [asyncio.create_task(tlog.run(), name="cloister-tlog"),
                      asyncio.create_task(known.run(slot.wait_started),
                                          name="cloister-known-answer")]
        if attestation is not None and isinstance(attestation.collateral,
                                                  RefreshedCollateral):
            background.append(asyncio.create_task(_renew(attestation.collateral),
                                                  name="cloister-collateral"))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if reports is not None:
                reports.close()
            await slot.stop()

    buckets = limits.RateBuckets(rate=limits_.secret_registrations_per_second,
                                 burst=limits_.secret_registration_burst)

    logged: list[BaseRoute] = [
        *tlog_routes.log_routes(tlog),
        Route(tlog_routes.BUNDLE_PATH, _vouched_by(known, tlog_routes.bundle_endpoint(
            reports, attestation, tlog)), methods=["GET"])]

    def served(*, attested_tls: bool) -> list[BaseRoute]:
        return [Route("/health", health, methods=["GET"]),
                Route("/ready", ready, methods=["GET"]),
                *_routes(dialects, services, known, reports, attestation, platform,
                         metrics_token, buckets, attested_tls=attested_tls), *logged]

    def listener(routes: list[BaseRoute], *, owns_lifespan: bool) -> Starlette:
        return Starlette(
            routes=routes, lifespan=lifespan if owns_lifespan else None,
            middleware=[Middleware(metrics.GatewayMiddleware, metrics=gateway_metrics),
                        *(PUBLIC_CORS if owns_lifespan else ())],
            exception_handlers={GatewayError: gateway_error, HTTPException: _http_error,
                                Exception: _unexpected_error})

    app = listener(served(attested_tls=False), owns_lifespan=True)
    # The attested TLS listener is an app of its own: the platform and admin APIs exist
    # there by construction, never on the public listener (no scheme or header check).
    tls_only = [*(platform.routes() + platform_docs.docs_routes(VERSION)
                  if platform is not None else []), *admin_routes]
    tls_app = (listener([*served(attested_tls=True), *tls_only], owns_lifespan=False)
               if tls_only else app)
    return Gateway(app, tls_app, config, gateway_metrics, slot, keyring, dialects, reports,
                   tlog, receipts, known)
