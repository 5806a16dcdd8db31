"""The dialect contract and the client attacks run against the same in-process gateways
as the unit tests: their fixtures (`tests/unit/conftest.py`)."""

from tests.unit.conftest import (  # noqa: F401 - fixtures, found by name
    browser,
    default_client,
    engine,
    gateway_app,
    make_app,
    plaintext_client,
)
