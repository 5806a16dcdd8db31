"""Fixtures every suite may use: a real PostgreSQL for the session (`tests/postgres.py`).
And the suites' order and summary: integration first (it starts real gateways, which the
rest of the run must not slow), then the contract, then the unit tests; every
integration test is `slow` (`pytest -m "not slow"` for the edit-test loop); one line
per suite at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from tests.postgres import PostgresServer, wait_ready

_names = count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    folder = Path(tempfile.mkdtemp(prefix="cloister-pg-"))
    os.chmod(folder, 0o755)  # the server may run as another user (see tests/postgres.py)
    server = PostgresServer(folder).start()
    wait_ready(server)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A new, empty database on the session's server."""
    return postgres.create_database(f"test_{next(_names)}")


SUITES = ("integration", "contract", "unit")


def _suite(item: pytest.Item) -> str:
    parts = Path(str(item.path)).parts
    return parts[parts.index("tests") + 1] if "tests" in parts else ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: SUITES.index(_suite(item)) if _suite(item) in SUITES
               else len(SUITES))
    for item in items:
        if _suite(item) == "integration":
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter: object, exitstatus: int,
                            config: pytest.Config) -> None:
    stats = getattr(terminalreporter, "stats", {})
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in stats.get(outcome, []):
            if getattr(report, "when", "call") not in ("call", "setup"):
                continue
            if outcome == "passed" and report.when != "call":
                continue
            suite = Path(str(report.fspath)).parts
            name = suite[suite.index("tests") + 1] if "tests" in suite else "other"
            counts.setdefault(name, {}).setdefault(outcome, 0)
            counts[name][outcome] += 1
    write = terminalreporter.write_line
    for name in (*SUITES, *sorted(set(counts) - set(SUITES))):
        if name in counts:
            write(f"{name}: " + ", ".join(f"{n} {o}" for o, n in counts[name].items()))
