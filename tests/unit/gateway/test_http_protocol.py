"""The listeners' HTTP protocol on sockets it did not open itself."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from uvicorn.server import ServerState

from gateway.http_protocol import listener_options


async def _ok(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_connections_from_a_shared_listening_socket_send_without_delay() -> None:
    """`--workers` serves a listening socket made with `socket.socket()` (protocol 0, as
    vLLM's `create_server_socket` makes it). asyncio turns Nagle's algorithm off only for
    sockets made with protocol IPPROTO_TCP, so every small answer on such a connection
    waited for the client's delayed acknowledgement: 44 ms per request on loopback
    (0.7 ms from a listener uvicorn bound itself)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    accepted.setblocking(False)
    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    config = uvicorn.Config(_ok, log_config=None, **listener_options())
    config.load()
    loop = asyncio.get_running_loop()
    transport, _protocol = await loop.connect_accepted_socket(
        lambda: config.http_protocol_class(config=config, server_state=ServerState(),
                                           app_state={}),
        accepted)
    try:
        served = transport.get_extra_info("socket")
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        transport.close()
        client.close()
        listener.close()
