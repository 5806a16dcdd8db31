"""The decrypted OpenAI surface, checked by a tool we did not write: schemathesis, driven
by OpenAI's own OpenAPI document (`tests.openai_schema`), against `cloister proxy` in
front of a served gateway (OHTTP, simulated TEE, the deterministic test engine);
`tests/integration/test_openai_schema_real_engine.py` runs it over the real engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from attestation.simulated import SimulatedPki
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.app import create_proxy_app
from proxy.attestor import Attestor
from proxy.dialects import make_client
from tests import openai_schema
from tests.attested import simulated, trusting
from tests.doubles import DeterministicTestEngine
from tests.served import served

schema = openai_schema.load()


@pytest.fixture(scope="module")
def proxy_url(tmp_path_factory) -> Iterator[str]:
    pki = SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))
    gateway = create_app(ServeConfig.of(), DeterministicTestEngine().running,
                         attestation=simulated(pki))
    with served(gateway) as gateway_url:
        client = make_client(gateway_url, "ohttp",
                             attestation=Attestor(gateway_url, trust=trusting(pki)))
        with served(create_proxy_app(client)) as url:
            yield url


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_openai_document_s_shapes_hold(case, proxy_url) -> None:
    case.call_and_validate(base_url=f"{proxy_url}/v1", checks=openai_schema.CHECKS)
