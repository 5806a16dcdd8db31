"""Errors of the dialects, both sides: one family each, with stable codes.

Server side (`RequestRefused`): a request the enclave will not open. A decryption
failure says nothing about which check failed (pyca's `InvalidTag`, Fernet's bare
`InvalidToken`): malformed framing, a bad tag, a truncated stream, a reordered chunk all
raise `DecryptError` with the same message, so that a client cannot use the gateway as
an oracle. An unknown or retired key has its own class, because it is not
secret-dependent and the client must refetch keys. Messages never include key material
or plaintext.

Client side (`AnswerRefused`): an answer the client will not pass on, because the
gateway did not authenticate it (`UnauthenticatedAnswer`) or because it says the
client's key or secret is stale (`StaleCredentials`: refetch, then retry once).
"""

from __future__ import annotations

from enclave.wire_errors import ErrorCode, status_of


class RequestRefused(Exception):
    """Base class of every refusal, the dialects' and the gateway's (`GatewayError` is
    one): `code` is the wire code (whence the status), `message` says why without quoting
    content, `param` names the offending field, `headers` go on the answer (a
    `Retry-After`). Subclasses fix a code and message as class attributes."""

    code: ErrorCode = ErrorCode.DECRYPTION_FAILED
    message = "decryption failed"

    def __init__(self, message: str | None = None, *, code: ErrorCode | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        if code is not None:
            self.code = code
        self.message = message or type(self).message
        self.param = param
        self.headers = headers or {}
        super().__init__(self.message)

    @property
    def status(self) -> int:
        return status_of(self.code)


class DecryptError(RequestRefused):
    """Any failure to open a message or a chunk. Deliberately uninformative."""

    def __init__(self) -> None:
        super().__init__()


class UnknownKeyError(RequestRefused):
    """The key id (or its suite) is not one the gateway currently accepts: refetch keys."""

    code = ErrorCode.UNKNOWN_KEY
    message = "unknown or expired key configuration"

    def __init__(self) -> None:
        super().__init__()


class MessageTooLargeError(RequestRefused):
    """A declared or buffered size exceeds a limit (checked before buffering)."""

    code = ErrorCode.BODY_TOO_LARGE
    message = "message exceeds the size limit"


class MalformedRequest(RequestRefused):
    """The request's envelope is malformed; the message names the field, never its value."""

    code = ErrorCode.INVALID_REQUEST
    message = "malformed request"


class InvalidJson(MalformedRequest):
    code = ErrorCode.INVALID_JSON
    message = "request body is not valid JSON"


class UnknownSecretError(RequestRefused):
    """The Continuum secret_id is unknown or expired: register a new secret."""

    code = ErrorCode.UNKNOWN_SECRET
    message = "unknown or expired secret_id: register a new secret"


class PlaintextRefused(RequestRefused):
    code = ErrorCode.PLAINTEXT_REFUSED
    message = ("plaintext prompts are refused: send requests through an encrypted channel "
               "(for example `cloister proxy`)")


class ExpectationFailed(RequestRefused):
    code = ErrorCode.EXPECTATION_FAILED
    message = "an encapsulated request cannot expect 100-continue"


class SealedRefusal(RequestRefused):
    """A request that opened (the keys of its answer are agreed) but is refused: the
    refusal goes sealed, with `responder` (RFC 9458 section 5.2: errors found after
    decapsulation are sent in an Encapsulated Response)."""

    def __init__(self, error: RequestRefused, responder: object) -> None:
        super().__init__(error.message, code=error.code, param=error.param)
        self.responder = responder


class AnswerRefused(Exception):
    """Base class of what a client refuses in an answer; `outer_status` is the HTTP
    status it came with (unauthenticated: for diagnostics and failover only)."""

    code = "gateway_response_invalid"

    def __init__(self, message: str, *, outer_status: int | None = None,
                 outer_code: str | None = None) -> None:
        super().__init__(message)
        self.outer_status = outer_status
        self.outer_code = outer_code


class UnauthenticatedAnswer(AnswerRefused):
    """Tampered, reordered, truncated, forged or unsealed: never passed on."""


class StaleCredentials(AnswerRefused):
    """The gateway no longer accepts this key, node key or secret: refetch and retry."""

    code = "gateway_key_unavailable"
