"""What the gateway knows about one request, owned by the middleware that creates it.

The middleware makes a `RequestContext` for every HTTP request (an id for
`X-Request-Id` and the logs, the start time) and reads it back when the response is
done; the endpoint that serves the request names its dialect there, once it has chosen
one. Nothing else is passed between them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

_SCOPE_KEY = "cloister.context"
CONTROL = "control"


@dataclass
class RequestContext:
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.perf_counter)
    dialect: str = CONTROL

    @classmethod
    def attach(cls, scope: MutableMapping[str, Any]) -> RequestContext:
        context = cls()
        scope[_SCOPE_KEY] = context
        return context

    @classmethod
    def of(cls, scope: Any) -> RequestContext:
        """The request's context (a fresh one when no middleware made it: unit tests of
        a bare endpoint)."""
        context = scope.get(_SCOPE_KEY)
        return context if isinstance(context, cls) else cls.attach(scope)
