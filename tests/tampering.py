"""`ByteFlippingRelay` (a test tool): an HTTP relay between a client and the gateway that
passes everything on unchanged except one byte of one body, the operator's or a network's
cheapest forgery. Every client of the compatibility tests must refuse what it produces.

- `request`: one byte of each POST body changes (`_flip`: a binary body's AEAD tag, or a
  character of a JSON body's ciphertext), so the gateway must refuse it;
- `response`: one byte of the first piece of each POST answer's body changes (inside a
  sealed response or its first sealed chunk or event), so the client must refuse it.

GET passes untouched, so key discovery and attestation work as they would, and so do the
POST paths named `untouched` (a dialect's unsealed control calls, Atoma's node lock);
`flipped` counts the bodies changed, so a test can tell a refusal from a relay that did
nothing."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from typing import Literal

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


_TEXT = ("application/json", "text/event-stream")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{24,}")


def _flip(data: bytes, content_type: str) -> bytes:
    """One byte changed where it is sealed: in a binary body the last byte (an AEAD tag);
    in JSON or events, one character in the middle of the longest base64 run (a
    ciphertext field), so the text still parses and only the cryptography can tell."""
    if not data:
        return data
    if content_type.split(";")[0].strip() in _TEXT:
        runs = list(_BASE64_RUN.finditer(data))
        if runs:
            run = max(runs, key=lambda m: m.end() - m.start())
            at = (run.start() + run.end()) // 2
            return data[:at] + (b"B" if data[at:at + 1] == b"A" else b"A") + data[at + 1:]
    return data[:-1] + bytes([data[-1] ^ 0x01])


class ByteFlippingRelay:
    def __init__(self, target: str, direction: Literal["request", "response"], *,
                 verify: ssl.SSLContext | bool = True, untouched: frozenset[str] = frozenset()
                 ) -> None:
        self.target = target.rstrip("/")
        self.direction = direction
        self.flipped = 0
        self._verify = verify
        self._untouched = untouched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = Request(scope, receive)
        body = await request.body()
        tamper = request.method == "POST" and request.url.path not in self._untouched
        if tamper and self.direction == "request" and body:
            body = _flip(body, request.headers.get("content-type", ""))
            self.flipped += 1
        client = httpx.AsyncClient(timeout=120, verify=self._verify)
        upstream = await client.send(client.build_request(
            request.method, self.target + request.url.path
            + (f"?{request.url.query}" if request.url.query else ""),
            headers=[(k, v) for k, v in request.headers.items() if k not in _HOP],
            content=body), stream=True)

        kind = upstream.headers.get("content-type", "")

        async def pieces() -> AsyncIterator[bytes]:
            first = tamper and self.direction == "response"
            async for piece in upstream.aiter_raw():
                if first and piece:
                    piece, first = _flip(piece, kind), False
                    self.flipped += 1
                yield piece

        async def close() -> None:
            await upstream.aclose()
            await client.aclose()

        headers = [(k, v) for k, v in upstream.headers.items() if k not in _HOP]
        answer: Response = StreamingResponse(pieces(), status_code=upstream.status_code,
                                             headers=dict(headers),
                                             background=BackgroundTask(close))
        await answer(scope, receive, send)
