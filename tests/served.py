"""An ASGI app served by a real uvicorn on a free loopback port, in a thread: for clients
that only speak synchronous HTTP to a URL (the peers' published SDKs, a browser)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.tls import TlsIdentity

STARTUP_TIMEOUT_S = 30


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.contextmanager
def served(app: Any, *, tls: TlsIdentity | None = None, **options: Any) -> Iterator[str]:
    """`app` (its lifespan included) at `http://127.0.0.1:PORT` while the block runs, or
    at `https://` under `tls` (a certificate for 127.0.0.1); `options` go to
    `uvicorn.Config` (e.g. the gateway's `listener_options()`)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with contextlib.ExitStack() as files:
        if tls is not None:
            certfile, keyfile = files.enter_context(tls.files())
            options = {**options, "ssl_certfile": certfile, "ssl_keyfile": keyfile}
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                **options)
        config.load()  # reads the certificate while its in-memory files exist
    server = _Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])),
                              daemon=True)
    thread.start()
    if not server.ready.wait(STARTUP_TIMEOUT_S):
        raise RuntimeError("the app did not start")
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT_S)
        sock.close()
