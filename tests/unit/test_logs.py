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


@pytest.mark.parametrize("name", ["vllm.tool_parsers.hermes_tool_parser",
                                  "vllm.v1.structured_output.backend_xgrammar",
                                  "vllm.reasoning", "transformers.tokenization_utils_base",
                                  "some.library.nobody.listed"])
def test_third_party_text_is_kept_only_from_loggers_on_the_allow_list(logs, name) -> None:
    """Issue 28: tool parsers log model output and structured output logs client schemas
    at `info`. A third-party record keeps its text only when its logger is listed."""
    logging.getLogger(name).warning("parsed %s", CANARY)  # past any library's own level
    logging.getLogger("vllm.v1.engine.core").info("EngineCore started")
    first, second = logs()
    assert CANARY not in json.dumps(first) and first["event"] == REDACTED
    assert first["logger"] == name
    assert second["event"] == "EngineCore started"
