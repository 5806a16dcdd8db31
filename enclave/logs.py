"""Structured logs: JSON lines with an allow-list of fields, nothing confidential.
Both sides use it: the gateway, and the proxy on the user's machine.

Every record, the gateway's own (structlog) and third-party ones (uvicorn, vLLM, httpx
through the standard library), goes through one formatter that keeps only the fields
named in `ALLOWED_FIELDS`. Third-party messages come from code that may quote a request
or an answer (vLLM's serving layer logs validation errors with their input, its tool
parsers log model output, structured output logs client schemas), so a third-party
record keeps its text only when its logger is on `THIRD_PARTY_TEXT` (vLLM's start-up,
engine and scheduler, which handle no request content) and it is not an error; every
other keeps its logger, level and exception type but loses its text and traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

ALLOWED_FIELDS = frozenset({
    "event", "level", "timestamp", "logger", "request_id", "dialect", "route", "status",
    "duration_ms", "error_type", "code", "reason", "models", "detail", "gateway", "platform",
    "key_id", "epoch", "exc_type", "worker", "workers",
    # start-up and the engine's checks: steps, the URLs listened on, digests, the served
    # model a known-answer check asked (gateway.startup, gateway.known_answer)
    "step", "duration_s", "urls", "workload", "client", "model", "digest", "result",
})
# Third-party loggers whose text is kept (below ERROR): start-up and the engine's life,
# never request or answer content. Everything else is redacted.
THIRD_PARTY_TEXT = ("vllm.config", "vllm.engine", "vllm.v1.engine", "vllm.v1.core",
                    "vllm.v1.executor", "vllm.v1.worker", "vllm.worker", "vllm.executor",
                    "vllm.platforms", "vllm.model_executor.model_loader", "vllm.distributed",
                    "vllm.compilation", "vllm.v1.metrics")
REDACTED = "third_party_log_redacted"


def _text_allowed(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in THIRD_PARTY_TEXT)


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
    if record.levelno >= logging.ERROR or not _text_allowed(record.name):
        event["event"] = REDACTED
    return event


class QuietRedacted(logging.Filter):
    """Leaves out a library's record below WARNING whose text would be redacted: a line
    that says only "a library logged something" is noise (a start printed 150 of them);
    warnings and errors still show, redacted, with their logger and exception type."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):  # structlog's own event (wrapped for the formatter)
            return True
        return record.levelno >= logging.WARNING or _text_allowed(record.name)


def adopt_library_loggers() -> None:
    """Every library logger made so far writes through the root's handler (and so through
    the formatter and its allow-list), not a handler of its own: uvicorn's, vLLM's, and
    transformers', which prints raw text to stderr. Called at start and again once the
    engine's libraries are imported."""
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.handlers = []
            logger.propagate = True


_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def json_formatter() -> logging.Formatter:
    """The one formatter: JSON lines, allow-listed fields, third-party text redacted."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, redact_third_party],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, allow_list,
                    structlog.processors.JSONRenderer()],
    )


def engine_logging_config(level: str) -> dict[str, Any]:
    """The `dictConfig` vLLM applies in each engine process it spawns (and in this one):
    every record through `json_formatter` on stderr, at `level` (vLLM takes it as a file:
    `engine_logging_file`)."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"cloister": {"()": f"{__name__}.json_formatter"}},
        "filters": {"quiet": {"()": f"{__name__}.QuietRedacted"}},
        "handlers": {"cloister": {"class": "logging.StreamHandler", "formatter": "cloister",
                                  "filters": ["quiet"], "stream": "ext://sys.stderr"}},
        "loggers": {"vllm": {"handlers": [], "level": level, "propagate": True},
                    "httpx": {"level": "WARNING"}},
        "root": {"handlers": ["cloister"], "level": level},
    }


def engine_logging_file(folder: str) -> str:
    """A file holding `engine_logging_config` at this process's level, in `folder` (the
    engine's private folder): the engine's processes log as this one does. Written whole
    and then renamed into place: two engines starting at once each write it while the
    other's vLLM may be reading it, and a half-written file failed a start."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    path = os.path.join(folder, "engine-logging.json")
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, suffix=".new",
                                     delete=False) as file:
        json.dump(engine_logging_config(level), file)
    os.replace(file.name, path)
    return path


def configure_logging(level: str = "info", *, stream: TextIO | None = None) -> None:
    """JSON lines on stderr (or `stream`) for every logger of the process."""
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter())
    handler.addFilter(QuietRedacted())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    adopt_library_loggers()
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream request
