"""Gateway errors: a failure that becomes a JSON error response with a stable code.

The vocabulary of codes, their HTTP statuses and the OpenAI error shape live in
`enclave.wire_errors`, shared with the dialects (which seal errors once a request is
opened). Messages are fixed per code or built only from values the gateway chose
(limits, route names): never from request content, keys or secrets.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from enclave.errors import RequestRefused
from enclave.wire_errors import ErrorCode, error_body


class GatewayError(RequestRefused):
    """The gateway's refusal, of the one `RequestRefused` family: it becomes a JSON error
    response (unsealed before a request is opened: say nothing of content)."""

    def __init__(self, code: ErrorCode, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, param=param, headers=headers)

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, param=self.param)

    def body_json(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":")).encode()

    def response(self) -> Response:
        return json_response(self.status, self.body(), headers=self.headers)


def json_response(status: int, payload: Any, *, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")).encode(), status_code=status,
                    media_type="application/json", headers=headers)
