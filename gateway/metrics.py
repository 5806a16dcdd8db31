"""`GET /metrics`: the gateway's own `cloister_*` metrics and vLLM's `vllm:*` in one scrape.

vLLM registers its metrics in prometheus-client's default registry; the gateway's live in
a registry of the app's own, so that several apps in one process (tests) never collide.
With several gateway processes (`cloister serve --workers N`), prometheus-client's
multiprocess mode is on (`PROMETHEUS_MULTIPROC_DIR`, set before the workers start): every
process writes its values to that folder and a scrape, answered by any worker, sums them
all; only the engine's live gauges are that worker's own.
Every label takes values from a fixed set (dialects, route templates, status codes,
error codes, stages): nothing from request content, nothing unbounded.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import RequestContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
access_log = structlog.get_logger("cloister.access")
# Latency buckets for LLM serving: milliseconds of framing up to minutes of generation.
# Coarse on purpose: a request's duration and time to first token follow its prompt and
# answer lengths, so fine buckets let whoever scrapes read one user's request back.
LATENCY_BUCKETS = (0.1, 0.5, 2.5, 10, 60, 300)
TTFT_BUCKETS = (0.1, 0.5, 2.5, 10)


class _EngineCollector(Collector):
    """Reads the engine's own counters at scrape time."""

    def __init__(self, engine: Callable[[], Any]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self._engine()
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
    def __init__(self, engine: Callable[[], Any]) -> None:
        """`engine` answers the running engine (or None) at scrape time."""
        self.live = CollectorRegistry(auto_describe=False)
        self.live.register(_EngineCollector(engine))
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("cloister_requests", "Requests by dialect, route and status",
                                ["dialect", "route", "status"], registry=r)
        self.duration = Histogram("cloister_request_duration_seconds",
                                  "Time from request start to the last byte sent",
                                  ["dialect", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("cloister_time_to_first_token_seconds",
                              "Time from request start to the first streamed chunk sent",
                              ["dialect"], buckets=TTFT_BUCKETS, registry=r)
        self.in_flight = Gauge("cloister_requests_in_flight", "Requests being served",
                               ["dialect"], registry=r, multiprocess_mode="livesum")
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
        self.known_answer_checks = Counter(
            "cloister_known_answer_checks", "Known-answer checks of the engine by result "
            "(ok, mismatch, failed)", ["result"], registry=r)


def route_template(scope: Scope) -> str:
    """The matched route's path template (a bounded set), or "other"."""
    route = scope.get("route")
    return getattr(route, "path", None) or "other"


class GatewayMiddleware:
    """The one middleware: every HTTP request gets its context (an id, sent back as
    `X-Request-Id` and bound to every log line, and its start time); when it is done it
    is counted, timed and logged under the dialect its endpoint chose."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        context = RequestContext.attach(scope)
        request_id = context.request_id.encode()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id",
                                                                    request_id)]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=context.request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                route = route_template(scope)
                elapsed = time.perf_counter() - context.started_at
                self.metrics.requests.labels(context.dialect, route, str(status)).inc()
                self.metrics.duration.labels(context.dialect, route).observe(elapsed)
                access_log.info("request", dialect=context.dialect, route=route,
                                status=status, duration_ms=round(elapsed * 1000, 2))


def scrape_endpoint(metrics: GatewayMetrics, *, token: str | None = None
                    ) -> Callable[[Request], Awaitable[Response]]:
    """`GET /metrics`: the gateway's registry and vLLM's (the process default). With
    `token`, only for `Authorization: Bearer <token>` (others get 404, as if absent)."""
    expected = f"Bearer {token}".encode() if token is not None else None

    async def scrape(request: Request) -> Response:
        if expected is not None and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), expected):
            raise HTTPException(404)
        return Response(render(metrics), media_type=CONTENT_TYPE)

    return scrape


def render(metrics: GatewayMetrics) -> bytes:
    """The exposition text: the engine's live gauges, then every counted value (the
    gateway's and vLLM's; with several gateway processes, summed over all of them)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        every = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(every)  # type: ignore[no-untyped-call]
        return generate_latest(metrics.live) + generate_latest(every)
    return (generate_latest(metrics.live) + generate_latest(metrics.registry)
            + generate_latest(REGISTRY))


def metrics_only_app(metrics: GatewayMetrics) -> ASGIApp:
    """`/metrics` on a listener of its own (e.g. a scrape-only port)."""
    return Starlette(routes=[Route("/metrics", scrape_endpoint(metrics), methods=["GET"])])
