"""The HTTP/1.1 implementation every listener runs: uvicorn's h11 protocol, with a bound on
the request head and a deadline for it.

Why h11 and not httptools (which vLLM installs and uvicorn then prefers): under httptools
uvicorn puts no bound on a request's headers (a 64 MiB header was accepted, the process
grew by 64 MiB); h11 stops buffering an incomplete head at `max_incomplete_event_size`,
and a Python protocol lets us refuse a complete head over the same bound (one that came
in a single read) before the app sees it. Neither has a deadline for the head
(slowloris: one byte every few seconds holds a connection forever), which
`BoundedH11Protocol` adds; bodies have their own deadline (`--body-timeout`). Refusals
are uvicorn's `400 Invalid HTTP request received.`, then the connection is closed.

Every connection sends without Nagle's delay: asyncio turns it off only on sockets made
with protocol IPPROTO_TCP, and a listening socket made with `socket.socket()` (protocol
0, as the `--workers` listener is) hands over connections with it on, so each small
answer waited for the client's delayed acknowledgement (about 40 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 32 * 1024
HEAD_TIMEOUT_SECONDS = 10.0


class _BoundedConnection(h11.Connection):
    """h11, refusing a complete request head (target and fields) over `MAX_HEAD_BYTES`."""

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.Request) and len(event.target) + sum(
                len(name) + len(value) + 4 for name, value in event.headers) > MAX_HEAD_BYTES:
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return event


class BoundedH11Protocol(H11Protocol):
    """A connection that has sent no complete request head within `head_timeout` seconds
    of opening (or of its last answer, on keep-alive) is closed; a head over
    `MAX_HEAD_BYTES` is refused."""

    head_timeout = HEAD_TIMEOUT_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _BoundedConnection(h11.SERVER, MAX_HEAD_BYTES)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_deadline: asyncio.TimerHandle | None = None
        self._awaited: Any = None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._awaited = self.cycle  # a new cycle means a complete head arrived
        self._head_deadline = self.loop.call_later(self.head_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._awaited:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None
                                                or self.cycle.response_complete):
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self._head_deadline = None
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.cycle is self._awaited and not self.transport.is_closing():
            self.transport.close()


def bounded_protocol(head_timeout: float) -> type[BoundedH11Protocol]:
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {"head_timeout": head_timeout})


def listener_options(head_timeout: float = HEAD_TIMEOUT_SECONDS) -> dict[str, Any]:
    """What every `uvicorn.Config` of the gateway takes."""
    return {"http": bounded_protocol(head_timeout),
            "h11_max_incomplete_event_size": MAX_HEAD_BYTES}
