"""The platform API documents itself: the OpenAPI document names exactly the routes the
TLS listener serves, and the docs page loads only local assets."""

from __future__ import annotations

import re

import httpx
from starlette.routing import Route

from gateway.app import create_app
from gateway.config import ServeConfig
from gateway.platform_docs import ASSETS_PATH, DOCS_PATH, OPENAPI_PATH
from gateway.platform_routes import PREFIX
from testkit.doubles import DeterministicTestEngine
from tests.unit.gateway.test_platform import platform, store_factory  # noqa: F401 - fixture


def _served(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    out = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith(PREFIX) \
                and not route.path.startswith((DOCS_PATH, OPENAPI_PATH)):
            out |= {(route.path, m.lower()) for m in (route.methods or ()) if m != "HEAD"}
    return out


async def test_every_platform_route_is_documented_and_nothing_else(store_factory) -> None:  # noqa: F811
    engine = DeterministicTestEngine()
    app = create_app(ServeConfig.of(), engine.running, platform_store=store_factory())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.tls_app),
                                 base_url="https://gw") as client:
        document = (await client.get(OPENAPI_PATH)).json()
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    served = _served(app.tls_app)
    assert served, "the TLS listener serves platform routes"
    assert documented == served
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', str(document).replace("'", '"')))
    assert refs <= set(document["components"]["schemas"])


async def test_docs_are_served_on_tls_only_with_local_assets(store_factory) -> None:  # noqa: F811
    engine = DeterministicTestEngine()
    async with platform(store_factory(), engine) as tls:
        page = await tls.get(DOCS_PATH)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith(PREFIX) for s in sources)  # no CDN
        for source in sources:
            assert (await tls.get(source)).status_code == 200, source
        assert (await tls.get(f"{ASSETS_PATH}/swagger-ui-bundle.js")).status_code == 200
    async with platform(store_factory(), engine, scheme="http") as public:
        assert (await public.get(DOCS_PATH)).status_code == 404
        assert (await public.get(OPENAPI_PATH)).status_code == 404
