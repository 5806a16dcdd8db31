"""`GET /metrics`: the gateway's own `cloister_*` metrics and vLLM's `vllm:*` in one scrape.

vLLM registers its metrics in prometheus-client's default registry; the gateway's live in
a registry of the app's own, so that several apps in one process (tests) never collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(app))


async def endpoint(request: Request) -> Response:
    own: GatewayMetrics = request.app.state.metrics
    body = generate_latest(own.registry) + generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE)
