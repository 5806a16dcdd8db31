"""Fixtures every suite may use: a real PostgreSQL for the session (`tests/postgres.py`)."""

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
