"""The platform's database goes away mid-run (a real PostgreSQL that stops accepting
connections and drops the ones it had): the platform API answers `503 store_unavailable`,
the gateway keeps serving everything else, and when the database is back nothing is lost
(keys, usage and budgets are as they were, the pending settlement lands)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from uuid import uuid4

import psycopg
import pytest

from enclave.sealed_state import DataKey
from gateway.platform_store import PlatformStore, StoreUnavailable
from gateway.replay_store import SqlReplayCache
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.unit.gateway.test_platform import new_key, platform

CHAT = {"model": CHAT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}


def _set_available(postgres, url: str, available: bool) -> None:  # type: ignore[no-untyped-def]
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres",
                         autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(available).lower()}")
        if not available:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))


async def test_the_database_going_away_is_a_503_and_nothing_is_lost(
        postgres, postgres_url, tmp_path) -> None:
    store = PlatformStore(postgres_url, DataKey.from_key_file(tmp_path / "data-key"))
    key, record = new_key(store, "k", budget_tokens=10_000)
    auth = {"authorization": f"Bearer {key}"}
    async with platform(store, DeterministicTestEngine()) as tls:
        assert (await tls.post("/api/v1/chat/completions", json=CHAT,
                               headers=auth)).status_code == 200
        used = store.get_api_key(record.id)
        assert used is not None
        _set_available(postgres, postgres_url, False)
        try:
            down = await tls.post("/api/v1/chat/completions", json=CHAT, headers=auth)
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "store_unavailable"
            assert postgres_url.split("@")[1] not in down.text  # no address in the error
            assert (await tls.get("/health")).status_code == 200
            with pytest.raises(StoreUnavailable):
                store.list_accounts()
        finally:
            _set_available(postgres, postgres_url, True)
        back = await tls.post("/api/v1/chat/completions", json=CHAT, headers=auth)
        assert back.status_code == 200
    after = store.get_api_key(record.id)
    assert after is not None and after.requests == used.requests + 1
    assert after.reserved_tokens == 0 and after.used_tokens > used.used_tokens


async def test_a_settlement_waits_for_the_database(postgres, postgres_url, tmp_path,
                                                   monkeypatch) -> None:
    from gateway import platform_routes

    monkeypatch.setattr(platform_routes, "SETTLE_RETRY_DELAYS", (0.2,) * 50)
    store = PlatformStore(postgres_url, DataKey.from_key_file(tmp_path / "data-key"))
    key, record = new_key(store, "k", budget_tokens=10_000)
    reservation = store.reserve(record.id, 500)
    meter = platform_routes.Meter(store, reservation)
    _set_available(postgres, postgres_url, False)
    settling = asyncio.create_task(meter.finish({"total_tokens": 7}, True))
    await asyncio.sleep(0.5)
    assert not settling.done()  # still trying, the reservation still held
    _set_available(postgres, postgres_url, True)
    await asyncio.wait_for(settling, 10)
    settled = store.get_api_key(record.id)
    assert settled is not None and (settled.used_tokens, settled.reserved_tokens) == (7, 0)


def test_a_full_disk_is_store_unavailable_and_reads_go_on(tmp_path) -> None:
    """SQLite's own 'database or disk is full' (SQLITE_FULL), made by capping the file at
    its current size, as a full disk would."""
    import sqlalchemy as sa

    store = PlatformStore(f"sqlite:///{tmp_path / 'p.db'}",
                          DataKey.from_key_file(tmp_path / "data-key"))
    key, record = new_key(store, "k")
    engine = store._engine  # the test reaches in to cap the file, nothing else

    @sa.event.listens_for(engine, "connect")
    def cap(dbapi, _record) -> None:  # type: ignore[no-untyped-def]
        pages = dbapi.execute("PRAGMA page_count").fetchone()[0]
        dbapi.execute(f"PRAGMA max_page_count = {pages}")

    engine.dispose()
    with pytest.raises(StoreUnavailable):
        for n in range(200):  # until a new page is needed
            store.create_account(f"account-{n}" + "x" * 2000)
    assert store.authenticate(key) is not None  # what is stored is still served


async def test_an_answer_does_not_wait_for_a_database_that_went_away(
        postgres, postgres_url, tmp_path, monkeypatch) -> None:
    """The database goes away while the engine works: the answer still goes out (after
    at most `SETTLE_WAIT_SECONDS`, not the minute the settlement keeps retrying), and the
    settlement lands once the database is back."""
    import time

    from gateway import endpoint, platform_routes

    monkeypatch.setattr(platform_routes, "SETTLE_RETRY_DELAYS", (0.2,) * 100)
    monkeypatch.setattr(endpoint, "SETTLE_WAIT_SECONDS", 0.5)
    store = PlatformStore(postgres_url, DataKey.from_key_file(tmp_path / "data-key"))
    key, record = new_key(store, "k", budget_tokens=10_000)
    engine = DeterministicTestEngine(token_delay=0.01)
    async with platform(store, engine) as tls:
        async def away_while_working() -> None:
            await engine.generating_whole.wait()
            await asyncio.to_thread(_set_available, postgres, postgres_url, False)

        outage = asyncio.create_task(away_while_working())
        started = time.monotonic()
        answer = await tls.post("/api/v1/chat/completions", json={**CHAT, "max_tokens": 20},
                                headers={"authorization": f"Bearer {key}"})
        waited = time.monotonic() - started
        await outage
        _set_available(postgres, postgres_url, True)
        assert answer.status_code == 200 and waited < 5
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            settled = store.get_api_key(record.id)
            if settled is not None and settled.reserved_tokens == 0:
                break
            await asyncio.sleep(0.1)
    assert settled is not None and settled.reserved_tokens == 0
    assert settled.used_tokens == answer.json()["usage"]["total_tokens"]


async def test_shared_replay_records_unreachable_are_a_503_not_a_500(
        postgres, postgres_url) -> None:
    """A fleet's replay records live in the shared database: while it is away, sealed
    requests are refused `503 store_unavailable` (sealed, no driver text), and served
    again when it is back."""
    import json as jsonlib

    from gateway.app import create_app
    from gateway.config import ServeConfig
    from gateway.replay_store import SqlReplayCache
    from tests.clients import client_for
    from tests.unit.conftest import start

    app = create_app(ServeConfig.of(), DeterministicTestEngine().running,
                     replay_cache=SqlReplayCache(postgres_url))
    body = jsonlib.dumps(CHAT).encode()
    async with app.router.lifespan_context(app):
        await start(app)
        client = client_for(app, "ohttp")
        assert (await client.request("POST", "/v1/chat/completions", body)).status == 200
        _set_available(postgres, postgres_url, False)
        try:
            down = await client.request("POST", "/v1/chat/completions", body)
        finally:
            _set_available(postgres, postgres_url, True)
        back = await client.request("POST", "/v1/chat/completions", body)
        await client.aclose()
    assert down.status == 503
    assert jsonlib.loads(down.body)["error"]["code"] == "store_unavailable"
    assert postgres_url.split("@")[1] not in down.body.decode()
    assert back.status == 200


def test_replicas_starting_together_create_the_schema_once(postgres, tmp_path) -> None:
    """A fleet's replicas start at the same moment against one new database; every one
    opens its stores (CI saw a replica die on `duplicate key ... pg_type_typname_nsp_index`
    when two CREATE TABLEs of one name ran concurrently)."""
    key = DataKey.from_key_file(tmp_path / "data-key")
    for _ in range(3):  # a fresh database each round: the race is on the first creation
        url = postgres.create_database(f"schema_race_{uuid4().hex[:12]}")
        start = Barrier(6)

        def open_stores(url: str = url, start: Barrier = start) -> None:
            start.wait()
            PlatformStore(url, key).close()
            SqlReplayCache(url).close()

        with ThreadPoolExecutor(6) as pool:
            for opened in [pool.submit(open_stores) for _ in range(6)]:
                opened.result()  # raises what a replica would have died of
