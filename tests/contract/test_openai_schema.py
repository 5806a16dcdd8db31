"""The decrypted OpenAI surface, checked by a tool we did not write: schemathesis, driven
by OpenAI's own OpenAPI document (`tests.openai_schema`), against `cloister proxy` in
front of a served gateway (OHTTP, simulated TEE, the deterministic test engine).

`CLOISTER_SCHEMA_TARGET="BASE_URL CHAT_MODEL EMBEDDING_MODEL"` points it at another
decrypted surface instead: `tests/integration/test_openai_schema_real_engine.py` runs this
module so, in a process of its own, over the real engine."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from attestation.simulated import SimulatedPki
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.app import create_proxy_app
from proxy.attestor import Attestor
from proxy.dialects import make_client
from testkit.attested import simulated, trusting
from testkit.doubles import DeterministicTestEngine
from tests import openai_schema
from tests.served import served

pytestmark = pytest.mark.slow  # outside processes or a browser: `-m "not slow"` skips it

TARGET = os.environ.get("CLOISTER_SCHEMA_TARGET", "").split()
schema = openai_schema.load(*TARGET[1:3]) if TARGET else openai_schema.load()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory) -> Iterator[str]:
    if TARGET:
        yield TARGET[0]
        return
    pki = SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))
    gateway = create_app(ServeConfig.of(), DeterministicTestEngine().running,
                         attestation=simulated(pki))
    with served(gateway) as gateway_url:
        client = make_client(gateway_url, "ohttp",
                             attestation=Attestor(gateway_url, trust=trusting(pki)))
        with served(create_proxy_app(client)) as url:
            yield f"{url}/v1"


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_openai_document_s_shapes_hold(case, base_url) -> None:
    case.call_and_validate(base_url=base_url, checks=openai_schema.CHECKS, timeout=120)
