"""Gateway errors: one stable code per failure, mapped to an HTTP status in one table.

Every error leaves the gateway as an OpenAI-shaped JSON body
`{"error": {"message", "type", "code", "param"}}` where `code` is one of the stable
strings below. Messages are fixed per code or built only from values the gateway chose
(limits, route names): never from request content, keys or secrets.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from starlette.responses import Response

from enclave.errors import (
    DecryptError,
    EnclaveCryptoError,
    MessageTooLargeError,
    UnknownKeyError,
)


class ErrorCode(enum.StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PLAINTEXT_REFUSED = "plaintext_refused"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    MODEL_NOT_FOUND = "model_not_found"
    ENGINE_NOT_READY = "engine_not_ready"
    ENGINE_FAILED = "engine_failed"
    ENGINE_ERROR = "engine_error"
    INTERNAL_ERROR = "internal_error"
    DECRYPTION_FAILED = "decryption_failed"
    UNKNOWN_KEY = "unknown_key"
    RATE_LIMITED = "rate_limited"
    UNKNOWN_SECRET = "unknown_secret"
    OVERLOADED = "overloaded"
    UNAUTHORIZED = "invalid_api_key"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CHATBOT_NOT_FOUND = "chatbot_not_found"
    CONVERSATION_NOT_FOUND = "conversation_not_found"
    REQUEST_TIMEOUT = "request_timeout"
    ATTESTATION_UNAVAILABLE = "attestation_unavailable"


# code -> (HTTP status, OpenAI error type)
_TABLE: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVALID_JSON: (400, "invalid_request_error"),
    ErrorCode.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorCode.BODY_TOO_LARGE: (413, "invalid_request_error"),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: (415, "invalid_request_error"),
    ErrorCode.PLAINTEXT_REFUSED: (400, "invalid_request_error"),
    ErrorCode.NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.METHOD_NOT_ALLOWED: (405, "invalid_request_error"),
    ErrorCode.MODEL_NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.ENGINE_NOT_READY: (503, "server_error"),
    ErrorCode.ENGINE_FAILED: (503, "server_error"),
    ErrorCode.ENGINE_ERROR: (500, "server_error"),
    ErrorCode.INTERNAL_ERROR: (500, "server_error"),
    ErrorCode.DECRYPTION_FAILED: (400, "invalid_request_error"),
    ErrorCode.UNKNOWN_KEY: (422, "invalid_request_error"),
    ErrorCode.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorCode.UNKNOWN_SECRET: (400, "invalid_request_error"),
    ErrorCode.OVERLOADED: (503, "server_error"),
    ErrorCode.UNAUTHORIZED: (401, "authentication_error"),
    ErrorCode.BUDGET_EXHAUSTED: (402, "insufficient_quota"),
    ErrorCode.CHATBOT_NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.CONVERSATION_NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.REQUEST_TIMEOUT: (408, "invalid_request_error"),
    ErrorCode.ATTESTATION_UNAVAILABLE: (503, "server_error"),
}


def status_of(code: ErrorCode) -> int:
    return _TABLE[code][0]


class GatewayError(Exception):
    """A failure that becomes a JSON error response."""

    def __init__(
        self, code: ErrorCode, message: str, *, param: str | None = None,
        headers: dict[str, str] | None = None, problem_type: str | None = None,
    ) -> None:
        super().__init__(message)
        # RFC 9457 problem details, for dialects whose clients expect them (OHTTP, EHBP).
        self.problem_type = problem_type
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return status_of(self.code)

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, param=self.param)

    def response(self) -> Response:
        if self.problem_type is None:
            return json_response(self.status, self.body(), headers=self.headers)
        problem = {"type": self.problem_type, "title": self.message, "status": self.status,
                   **self.body()}
        return Response(json.dumps(problem).encode(), status_code=self.status,
                        media_type="application/problem+json", headers=self.headers)


def from_crypto_error(exc: EnclaveCryptoError, *, problem_type: str | None = None
                      ) -> GatewayError:
    """The one mapping from enclave crypto failures to wire errors.

    Every failure to open is the same `decryption_failed` with the same message (no
    oracle); an unknown key gets its own code (and the dialect's problem type) so that
    clients refetch keys; an oversized message is a 413.
    """
    if isinstance(exc, UnknownKeyError):
        return GatewayError(ErrorCode.UNKNOWN_KEY, exc.message, problem_type=problem_type)
    if isinstance(exc, MessageTooLargeError):
        return GatewayError(ErrorCode.BODY_TOO_LARGE, exc.message)
    return GatewayError(ErrorCode.DECRYPTION_FAILED, DecryptError.message)


def error_body(code: ErrorCode, message: str, *, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TABLE[code][1], "code": code.value,
                      "param": param}}


def json_response(
    status: int, payload: Any, *, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def normalize_engine_error(status: int, body: bytes) -> bytes:
    """Give an engine error body our stable string code, keeping vLLM's message.

    vLLM answers `{"error": {"message", "type", "param", "code": <HTTP status>}}`; clients
    of the gateway get one vocabulary of codes whatever produced the error.
    """
    try:
        payload = json.loads(body)
        error = payload["error"]
        message = str(error.get("message") or "engine error")
        param = error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        return json.dumps(error_body(ErrorCode.ENGINE_ERROR, "engine error")).encode()
    if status == 404 and param == "model":
        code = ErrorCode.MODEL_NOT_FOUND
    elif status == 404:
        code = ErrorCode.NOT_FOUND
    elif 400 <= status < 500:
        code = ErrorCode.INVALID_REQUEST
    else:
        code = ErrorCode.ENGINE_ERROR
    return json.dumps(error_body(code, message, param=param)).encode()
