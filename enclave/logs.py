"""Structured logs: JSON lines with an allow-list of fields, nothing confidential.
Both sides use it: the gateway, and the proxy on the user's machine.

Every record, the gateway's own (structlog) and third-party ones (uvicorn, vLLM, httpx
through the standard library), goes through one formatter that keeps only the fields
named in `ALLOWED_FIELDS`. Third-party messages come from code that may quote a request
(vLLM's serving layer logs validation errors with their input), so records from request
handling code, and every third-party error, keep their logger, level and exception type
but lose their text and traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

ALLOWED_FIELDS = frozenset({
    "event", "level", "timestamp", "logger", "request_id", "dialect", "route", "status",
    "duration_ms", "error_type", "code", "reason", "models", "detail", "gateway", "platform",
    "key_id", "epoch", "exc_type", "worker", "workers",
})
# Third-party loggers whose messages may carry request content.
_REQUEST_HANDLING = ("vllm.entrypoints", "vllm.renderers", "uvicorn.error", "uvicorn.access",
                     "starlette", "fastapi")
REDACTED = "third_party_log_redacted"


def allow_list(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop every field that is not explicitly allowed."""
    return {k: v for k, v in event.items() if k in ALLOWED_FIELDS}


def redact_third_party(_: Any, __: str, event: MutableMapping[str, Any]
                       ) -> MutableMapping[str, Any]:
    record: logging.LogRecord | None = event.get("_record")
    if record is None or event.get("_from_structlog"):
        return event
    exc_info = event.pop("exc_info", None) or record.exc_info
    if exc_info and isinstance(exc_info, tuple) and exc_info[0] is not None:
        event["exc_type"] = exc_info[0].__name__
    record.exc_info = None
    record.exc_text = None
    risky = record.name.startswith(_REQUEST_HANDLING) or record.levelno >= logging.ERROR
    if risky:
        event["event"] = REDACTED
    return event


def configure_logging(level: str = "info", *, stream: TextIO | None = None) -> None:
    """JSON lines on stderr (or `stream`) for every logger of the process."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, redact_third_party],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, allow_list,
                    structlog.processors.JSONRenderer()],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "vllm"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream request
