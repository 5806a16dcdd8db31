"""Raw ASGI for tests that must act between messages (hang up mid-stream, send a body
slowly): one request scope, and a call whose client hangs up when told to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

Message = dict[str, Any]


def http_scope(method: str, path: str, *, body: bytes = b"", scheme: str = "http",
               headers: Sequence[tuple[str, str]] = (("content-type", "application/json"),),
               client: tuple[str, int] = ("127.0.0.1", 1)) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": method, "scheme": scheme, "path": path,
            "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "client": client, "server": ("gw", 443 if scheme == "https" else 80),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers]
            + [(b"content-length", str(len(body)).encode())]}


async def call_until_hang_up(app: Any, scope: dict[str, Any], body: bytes, *,
                             hang_up_after: Callable[[Message], bool],
                             hang_up: asyncio.Event | None = None,
                             timeout: float = 10) -> list[Message]:
    """Deliver `body`, then disconnect as soon as `hang_up_after(sent message)` is true
    (or `hang_up` is set); return what the app sent."""
    gone = hang_up or asyncio.Event()
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if hang_up_after(message):
            gone.set()

    await asyncio.wait_for(app(scope, receive, send), timeout)
    return sent


def body_messages(sent: list[Message]) -> list[bytes]:
    return [m["body"] for m in sent if m["type"] == "http.response.body" and m.get("body")]


async def scrape(app: Any) -> str:
    """The gateway's metrics as its scrape-only listener serves them."""
    import httpx

    from gateway.metrics import metrics_only_app

    transport = httpx.ASGITransport(app=metrics_only_app(app.metrics))
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        return (await client.get("/metrics")).text
