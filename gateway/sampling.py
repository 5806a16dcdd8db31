"""The fields of an inference request that decide its cost, made unambiguous before the
engine and the meter see them.

vLLM's request models coerce leniently (pydantic's lax mode: `"10000"` is 10000,
`"true"` is true), so a check on the raw JSON can be walked around: a string
`max_tokens` past an integer-only cap, a string `stream` past a meter that looks for
`true`. Here every such field is coerced once, by the same rules, and written back in
its canonical type, so the cap, the budget reservation, the meter and the engine all
read the same value. A value these rules do not take is refused (`400
invalid_request`), never passed on for the engine to interpret.

    max_tokens, max_completion_tokens   one value (the smaller if both), written to both
    n, best_of                          integers >= 1
    stream                              a boolean
The output a request may cost is `max_tokens * max(n, best_of)`; with a cap (`--max-tokens`,
or the platform's default when a budget is at stake) that product may not exceed it, and
a request without `max_tokens` gets the cap divided by that factor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from enclave.wire_errors import ErrorCode
from gateway.errors import GatewayError

_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})


def _invalid(field: str, what: str) -> GatewayError:
    return GatewayError(ErrorCode.INVALID_REQUEST, f"`{field}` must be {what}", param=field)


def _int(payload: dict[str, Any], field: str, *, minimum: int) -> int | None:
    value = payload.get(field)
    if value is None:
        return None
    if isinstance(value, bool):
        raise _invalid(field, "an integer")
    integral = isinstance(value, float) and value.is_integer()
    if integral or isinstance(value, str) and _INTEGER.match(value):
        value = int(value)
    if not isinstance(value, int) or value < minimum:
        raise _invalid(field, f"an integer of at least {minimum}")
    return value


def _bool(payload: dict[str, Any], field: str) -> bool:
    value = payload.get(field, False)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _invalid(field, "a boolean")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None
    choices: int  # max(n, best_of)
    stream: bool

    @property
    def max_output(self) -> int | None:
        return None if self.max_tokens is None else self.max_tokens * self.choices


def normalize(payload: dict[str, Any], *, cap: int | None) -> Sampling:
    """Coerce the cost fields of `payload` in place (see the module doc); raises
    `GatewayError` for a value it does not take or a request over `cap`."""
    limits = [v for v in (_int(payload, "max_tokens", minimum=1),
                          _int(payload, "max_completion_tokens", minimum=1)) if v is not None]
    n = _int(payload, "n", minimum=1) or 1
    best_of = _int(payload, "best_of", minimum=1) or 1
    choices = max(n, best_of)
    if "n" in payload and payload["n"] is not None:
        payload["n"] = n
    if "best_of" in payload and payload["best_of"] is not None:
        payload["best_of"] = best_of
    if "stream" in payload:
        payload["stream"] = _bool(payload, "stream")
    max_tokens = min(limits) if limits else None
    if max_tokens is None and cap is not None:
        max_tokens = max(1, math.floor(cap / choices))
    if max_tokens is not None:
        if cap is not None and max_tokens * choices > cap:
            raise _invalid("max_tokens", f"at most {cap // choices} for {choices} "
                                         f"choice(s) (this gateway's cap is {cap} tokens)")
        payload["max_tokens"] = max_tokens
        if "max_completion_tokens" in payload:
            payload["max_completion_tokens"] = max_tokens
    return Sampling(max_tokens, choices, bool(payload.get("stream", False)))
