"""Logs are JSON lines holding allow-listed fields only; third-party text that may quote
a request is dropped."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from enclave.logs import REDACTED, configure_logging

CANARY = "CANARY-logs-5e1d"


@pytest.fixture
def logs():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line]
    root.handlers, root.level = saved
    structlog.reset_defaults()


def test_own_events_keep_allowed_fields_and_drop_the_rest(logs) -> None:
    structlog.get_logger("cloister.test").info("request", status=200, prompt=CANARY,
                                               secret=CANARY, route="/v1/models")
    (line,) = logs()
    assert line["event"] == "request" and line["status"] == 200 and line["route"] == "/v1/models"
    assert CANARY not in json.dumps(line)
    assert {"timestamp", "level", "logger"} <= set(line)


def test_third_party_request_handling_and_errors_are_redacted(logs) -> None:
    logging.getLogger("vllm.entrypoints.openai.serving").error(
        "Error with model error=ErrorInfo(message='%s')", CANARY)
    logging.getLogger("vllm.engine").info("engine ready in 3.0 s")
    try:
        raise ValueError(CANARY)
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    lines = logs()
    text = json.dumps(lines)
    assert CANARY not in text
    assert lines[0]["event"] == REDACTED
    assert lines[1]["event"] == "engine ready in 3.0 s"
    assert lines[2]["exc_type"] == "ValueError" and lines[2]["event"] == REDACTED
