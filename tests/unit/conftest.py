from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from gateway.app import Gateway, create_app
from gateway.config import ServeConfig
from testkit.doubles import DeterministicTestEngine


@pytest.fixture
def engine() -> DeterministicTestEngine:
    return DeterministicTestEngine()


async def start(app: Gateway) -> None:
    """Wait for the background engine start (the double starts at once) and its first
    known-answer check."""
    await app.engine_slot.wait_started()
    await app.known_answer.settled.wait()


@contextlib.asynccontextmanager
async def running(app: Gateway) -> AsyncIterator[Gateway]:
    """`app` with its lifespan entered and its engine started."""
    async with app.router.lifespan_context(app):
        await start(app)
        yield app


@pytest.fixture
def make_app(engine: DeterministicTestEngine) -> Callable[..., Gateway]:
    def factory(**settings: object) -> Gateway:
        return create_app(ServeConfig.of(**settings), engine.running)  # type: ignore[arg-type]
    return factory


@pytest.fixture
async def plaintext_client(make_app) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(insecure_plaintext=True, max_body_bytes=64 * 1024)
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


@pytest.fixture
async def default_client(make_app) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app()
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


__all__ = ["asyncio", "running", "start"]


@pytest.fixture
async def gateway_app(make_app) -> AsyncIterator[Gateway]:
    """A gateway (default settings: plaintext refused) with its lifespan running."""
    async with running(make_app(max_body_bytes=64 * 1024)) as app:
        yield app


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright, for a module's tests."""
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def tlogcheck(tmp_path_factory) -> Path:
    """Go's note and tlog packages in a small program (Debian's golang-go and
    golang-golang-x-mod-dev, installed by make env; built offline in GOPATH mode)."""
    out = tmp_path_factory.mktemp("go") / "tlogcheck"
    go = shutil.which("go") or "/usr/lib/go/bin/go"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode",
           "GOCACHE": str(out.parent / "cache"), "GOFLAGS": ""}
    subprocess.run([go, "build", "-o", str(out), "main.go"], check=True, env=env,
                   cwd=Path(__file__).parents[1] / "go" / "tlogcheck", timeout=300)
    return out
