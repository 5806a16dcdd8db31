"""The two pages a person looks at, in a real headless browser (Debian's chromium driven by
Playwright): the platform API's interactive docs, and `cloister proxy`'s status page with
its chat box going through the proxy to a gateway it verified (simulated TEE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page

from enclave.sealed_state import DataKey
from gateway.app import create_app
from gateway.config import ServeConfig
from gateway.platform_docs import DOCS_PATH, PATHS
from gateway.platform_store import PlatformStore
from proxy.app import create_proxy_app
from proxy.attestor import Attestor
from proxy.dialects import make_client
from testkit.attested import simulated, trusting
from testkit.doubles import DeterministicTestEngine
from tests.served import served

pytestmark = pytest.mark.slow  # outside processes or a browser: `-m "not slow"` skips it

# Where the screenshots go (the CI keeps nothing; a person running it can look).
SHOTS = Path(os.environ.get("CLOISTER_SCREENSHOTS", "")) if os.environ.get(
    "CLOISTER_SCREENSHOTS") else None


def _local_only(page: Page, origin: str) -> list[str]:
    foreign: list[str] = []
    page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(origin)
            else None)
    return foreign


def _shot(page: Page, name: str, tmp_path: Path) -> None:
    path = (SHOTS or tmp_path) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0


def test_the_platform_docs_render_every_route(browser, tmp_path) -> None:
    store = PlatformStore(f"sqlite:///{tmp_path / 'p.db'}",
                          DataKey.from_key_file(tmp_path / "data-key"))
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running, platform_store=store)
    with served(app.tls_app) as url:
        page = browser.new_page()
        foreign = _local_only(page, url)
        page.goto(f"{url}{DOCS_PATH}")
        page.wait_for_selector(".opblock")
        operations = page.locator(".opblock").count()
        title = page.locator(".info .title").inner_text()
        _shot(page, "platform-docs.png", tmp_path)
        page.close()
    assert operations == sum(len(ops) for ops in PATHS.values())
    assert "Cloister platform API" in title
    assert foreign == []  # nothing from a CDN


def test_the_status_page_shows_what_was_verified_and_its_chat_box_round_trips(
        browser, tmp_path) -> None:
    from attestation.simulated import SimulatedPki

    pki = SimulatedPki.load_or_create(tmp_path / "pki")
    gateway = create_app(ServeConfig.of(), DeterministicTestEngine().running,
                         attestation=simulated(pki))
    with served(gateway) as gateway_url:
        client = make_client(gateway_url, "ohttp",
                             attestation=Attestor(gateway_url, trust=trusting(pki)))
        with served(create_proxy_app(client)) as proxy_url:
            page = browser.new_page()
            foreign = _local_only(page, proxy_url)
            page.goto(proxy_url)
            assert page.locator(".gateway.unverified").count() == 1  # nothing sent yet
            page.fill("#prompt", "hello from a browser")
            page.click("button[type=submit]")
            page.wait_for_selector("#answer[data-done]")
            answer = page.locator("#answer")
            assert answer.get_attribute("data-done") == "ok", answer.inner_text()
            assert answer.inner_text().strip()
            page.reload()
            verified = page.locator(".gateway.verified")
            assert verified.count() == 1
            table = verified.inner_text()
            page.fill("#prompt", "and again, to a verified gateway")
            page.click("button[type=submit]")
            page.wait_for_selector("#answer[data-done=ok]")
            _shot(page, "proxy-status.png", tmp_path)
            page.close()
    claims = client.attestation.last
    assert claims is not None
    assert claims.platform in table and claims.workload.digest in table
    assert "test-chat" in table and "last attested" in table
    assert foreign == []
