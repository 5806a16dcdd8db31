"""Error bodies: stable codes, one table, engine errors normalized."""

from __future__ import annotations

import json

import pytest

from enclave.wire_errors import ErrorCode, normalize_engine_error, status_of
from gateway.errors import GatewayError


def test_every_code_has_a_status() -> None:
    for code in ErrorCode:
        assert 400 <= status_of(code) < 600


def test_gateway_error_body_is_openai_shaped() -> None:
    err = GatewayError(ErrorCode.BODY_TOO_LARGE, "too big")
    assert err.status == 413
    assert err.body() == {"error": {"message": "too big", "type": "invalid_request_error",
                                    "code": "body_too_large", "param": None}}


@pytest.mark.parametrize(("status", "param", "code"), [
    (404, "model", "model_not_found"), (404, None, "not_found"),
    (400, "body.messages", "invalid_request"), (500, None, "engine_error"),
])
def test_engine_errors_get_stable_codes(status, param, code) -> None:
    raw = json.dumps({"error": {"message": "m", "type": "T", "param": param, "code": status}})
    out = json.loads(normalize_engine_error(status, raw.encode()))
    assert out["error"]["code"] == code
    assert out["error"]["message"] == "m"


def test_unparseable_engine_error_becomes_generic() -> None:
    out = json.loads(normalize_engine_error(500, b"<html>oops</html>"))
    assert out["error"] == {"message": "engine error", "type": "server_error",
                            "code": "engine_error", "param": None}
