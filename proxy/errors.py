"""Errors of the client side: one class per failure, a stable code, a message safe to
show. The proxy answers each as `502` with `{"error": {"code", "message", ...}}`.

A client never passes on what the gateway did not authenticate: an unsealed, forged,
tampered or truncated answer is `GatewayResponseInvalid` whatever status it came with
(kept in `outer_status` for failover decisions, never shown as the answer's status).
"""

from __future__ import annotations

from enclave.errors import AnswerRefused, StaleCredentials


class ProxyError(Exception):
    """The gateway could not be used; `code` is stable, the message safe to show."""

    code = "proxy_error"

    def __init__(self, message: str, *, outer_status: int | None = None) -> None:
        super().__init__(message)
        self.outer_status = outer_status


class GatewayUnreachable(ProxyError):
    code = "gateway_unreachable"


class GatewayNotAttested(ProxyError):
    """The gateway's report did not verify, or does not vouch for its keys."""

    code = "gateway_not_attested"


class CredentialInClear(ProxyError):
    """A client was asked to send its credential (a platform API key) where the wire is
    not TLS the gateway's report binds (a plain http:// URL)."""

    code = "credential_in_clear"


class GatewayKeyUnavailable(ProxyError):
    """The gateway refused our key (or secret) again after a refetch."""

    code = "gateway_key_unavailable"


class GatewayResponseInvalid(ProxyError):
    """An answer the gateway did not authenticate: unsealed, forged, tampered, reordered
    or truncated."""

    code = "gateway_response_invalid"


def from_refused(exc: AnswerRefused) -> ProxyError:
    kind = GatewayKeyUnavailable if isinstance(exc, StaleCredentials) else GatewayResponseInvalid
    return kind(str(exc), outer_status=exc.outer_status)
