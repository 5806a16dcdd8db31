"""The gateway's error vocabulary on the wire: one stable code per failure, its HTTP
status and OpenAI error type in one table.

Every error leaves the gateway as an OpenAI-shaped JSON object
`{"error": {"message", "type", "code", "param"}}` with `code` one of the strings below,
sealed inside a dialect's encryption when the request was opened, in the clear when it
was not. Sans-IO: the dialects (both sides) and the gateway share it.
"""

from __future__ import annotations

import enum
import json
from typing import Any


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
    REPLAYED_REQUEST = "replayed_request"
    STALE_REQUEST = "stale_request"
    CACHE_SALT_REFUSED = "cache_salt_not_allowed"
    STATE_INVALID = "stored_state_invalid"
    STATE_ROLLED_BACK = "stored_state_rolled_back"
    ADMIN_UNAUTHORIZED = "invalid_admin_signature"
    UNKNOWN_CHALLENGE = "unknown_challenge"
    JOIN_REFUSED = "join_refused"
    STORE_UNAVAILABLE = "store_unavailable"
    CLIENT_GONE = "client_closed_request"
    ATTESTED_TLS_REQUIRED = "attested_tls_required"
    EXPECTATION_FAILED = "expectation_failed"
    LOG_NOT_READY = "log_not_ready"
    KNOWN_ANSWER_FAILED = "known_answer_failed"


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
    ErrorCode.REPLAYED_REQUEST: (409, "invalid_request_error"),
    ErrorCode.STALE_REQUEST: (400, "invalid_request_error"),
    ErrorCode.CACHE_SALT_REFUSED: (400, "invalid_request_error"),
    ErrorCode.STATE_INVALID: (500, "server_error"),
    ErrorCode.STATE_ROLLED_BACK: (500, "server_error"),
    ErrorCode.ADMIN_UNAUTHORIZED: (401, "authentication_error"),
    ErrorCode.UNKNOWN_CHALLENGE: (400, "invalid_request_error"),
    ErrorCode.JOIN_REFUSED: (403, "permission_error"),
    ErrorCode.ATTESTED_TLS_REQUIRED: (403, "permission_error"),
    ErrorCode.EXPECTATION_FAILED: (417, "invalid_request_error"),
    ErrorCode.STORE_UNAVAILABLE: (503, "server_error"),
    ErrorCode.LOG_NOT_READY: (503, "server_error"),
    ErrorCode.KNOWN_ANSWER_FAILED: (503, "server_error"),
    ErrorCode.CLIENT_GONE: (499, "invalid_request_error"),  # nginx's status for it
}


def status_of(code: ErrorCode) -> int:
    return _TABLE[code][0]


def error_body(code: ErrorCode, message: str, *, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TABLE[code][1], "code": code.value,
                      "param": param}}


def error_json(code: ErrorCode, message: str, *, param: str | None = None) -> bytes:
    return json.dumps(error_body(code, message, param=param), separators=(",", ":")).encode()


def code_of(body: bytes) -> str | None:
    """The stable code of an error body (ours, problem details or Atoma's), if any."""
    try:
        payload = json.loads(body)
        error = payload.get("error", payload)
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return code if isinstance(code, str) else None


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
        return error_json(ErrorCode.ENGINE_ERROR, "engine error")
    if status == 404 and param == "model":
        code = ErrorCode.MODEL_NOT_FOUND
    elif status == 404:
        code = ErrorCode.NOT_FOUND
    elif 400 <= status < 500:
        code = ErrorCode.INVALID_REQUEST
    else:
        code = ErrorCode.ENGINE_ERROR
    return error_json(code, message, param=param if isinstance(param, str) else None)
