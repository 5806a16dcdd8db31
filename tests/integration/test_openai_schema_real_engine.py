"""OpenAI's OpenAPI document (`tests.openai_schema`) driven by schemathesis against the
real gateway's decrypted surface (its plaintext test listener, `--insecure-plaintext`)
and its real vLLM engine: what vLLM answers, and what the gateway answers in its place,
in the document's shapes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests import openai_schema
from tests.integration.conftest import RunningGateway

pytestmark = pytest.mark.engine

schema = openai_schema.load("cloister-demo", "all-MiniLM-L6-v2")


@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_real_engine_answers_in_the_openai_document_s_shapes(
        case, gateway: RunningGateway) -> None:
    case.call_and_validate(base_url=f"{gateway.url}/v1", checks=openai_schema.CHECKS,
                           timeout=120)
