"""`GET /metrics`: the gateway's own `cloister_*` metrics and vLLM's `vllm:*` in one scrape.

vLLM registers its metrics in prometheus-client's default registry; the gateway's live in
a registry of the app's own, so that several apps in one process (tests) never collide.
Every label takes values from a fixed set (dialects, route templates, status codes,
error codes, stages): nothing from request content, nothing unbounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
access_log = structlog.get_logger("cloister.access")
DIALECTS = ("ohttp", "ehbp", "atoma", "continuum", "enclava", "plaintext", "control")
# Latency buckets for LLM serving: milliseconds of framing up to minutes of generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _EngineCollector(Collector):
    """Reads the engine's own counters at scrape time."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        slot = getattr(self._app.state, "engine_slot", None)
        engine = getattr(slot, "_engine", None)
        ready = GaugeMetricFamily("cloister_engine_ready", "1 once the engine is serving")
        ready.add_metric([], 1.0 if engine is not None else 0.0)
        yield ready
        if engine is not None:
            unfinished = GaugeMetricFamily(
                "cloister_engine_requests_unfinished",
                "Requests accepted by the engine and not yet finished or aborted",
            )
            unfinished.add_metric([], float(engine.unfinished_requests()))
            yield unfinished


class GatewayMetrics:
    def __init__(self, app: Any) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        r.register(_EngineCollector(app))
        self.requests = Counter("cloister_requests", "Requests by dialect, route and status",
                                ["dialect", "route", "status"], registry=r)
        self.duration = Histogram("cloister_request_duration_seconds",
                                  "Time from request start to the last byte sent",
                                  ["dialect", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("cloister_time_to_first_token_seconds",
                              "Time from request start to the first streamed chunk sent",
                              ["dialect"], buckets=TTFT_BUCKETS, registry=r)
        self.chunks = Counter("cloister_stream_chunks", "Streamed chunks sealed and sent",
                              ["dialect"], registry=r)
        self.in_flight = Gauge("cloister_requests_in_flight", "Requests being served",
                               ["dialect"], registry=r)
        self.crypto_failures = Counter("cloister_crypto_failures",
                                       "Requests that failed to open, by dialect and stage",
                                       ["dialect", "stage"], registry=r)
        self.rejected = Counter("cloister_rejected_requests",
                                "Requests refused, by stable error code", ["reason"], registry=r)
        self.attestation_reports = Counter("cloister_attestation_reports",
                                           "Attestation reports served", ["kind"], registry=r)
        self.attestation_latency = Histogram("cloister_attestation_report_seconds",
                                             "Time to collect one attestation report",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.key_rotations = Counter("cloister_key_rotations", "Enclave key rotations",
                                     registry=r)


def route_template(scope: Scope) -> str:
    """The matched route's path template (a bounded set), or "other"."""
    route = scope.get("route")
    return getattr(route, "path", None) or "other"


def dialect_of(scope: Scope) -> str:
    state = scope.get("state") or {}
    if state.get("dialect"):
        return str(state["dialect"])
    path = scope.get("path", "")
    headers = dict(scope.get("headers") or [])
    if b"ehbp-encapsulated-key" in headers:
        return "ehbp"
    if path == "/.well-known/ohttp-gateway" and scope.get("method") == "POST":
        return "ohttp"
    if path.startswith("/v1/confidential"):
        return "atoma"
    if path == "/v1/secrets":
        return "continuum"
    if path.startswith("/api/v1/"):
        return "enclava"
    if path.startswith("/v1/") and path != "/v1/attestation/report":
        return "plaintext"
    return "control"


def set_dialect(request: Request, dialect: str) -> None:
    request.scope.setdefault("state", {})["dialect"] = dialect


class MetricsMiddleware:
    """Counts every request, its duration, and what is in flight."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics: GatewayMetrics = scope["app"].state.metrics
        start = time.perf_counter()
        scope.setdefault("state", {})["started_at"] = start
        status = 500
        initial = dialect_of(scope)
        metrics.in_flight.labels(initial).inc()

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            metrics.in_flight.labels(initial).dec()
            dialect, route = dialect_of(scope), route_template(scope)
            elapsed = time.perf_counter() - start
            metrics.requests.labels(dialect, route, str(status)).inc()
            metrics.duration.labels(dialect, route).observe(elapsed)
            access_log.info("request", dialect=dialect, route=route, status=status,
                            duration_ms=round(elapsed * 1000, 2))


async def endpoint(request: Request) -> Response:
    own: GatewayMetrics = request.app.state.metrics
    body = generate_latest(own.registry) + generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE)


def record_crypto_failure(request: Request, stage: str) -> None:
    request.app.state.metrics.crypto_failures.labels(dialect_of(request.scope), stage).inc()


def metrics_only_app(main_app: Any) -> ASGIApp:
    """`/metrics` of `main_app` on a listener of its own (e.g. a scrape-only port)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def scrape(request: Request) -> Response:
        own: GatewayMetrics = main_app.state.metrics
        return Response(generate_latest(own.registry) + generate_latest(REGISTRY),
                        media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", scrape, methods=["GET"])])
