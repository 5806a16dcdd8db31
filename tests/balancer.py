"""TCP forwarders on loopback, run on an event loop in a thread of their own (test tools):

- `RoundRobinBalancer`: each new connection goes to the next backend, bytes piped both
  ways untouched (TLS passes through); the fleet tests put it in front of replicas.
- `RecordingRelay`: one backend, and every byte that crosses is kept, in both directions,
  so a test can grep the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from itertools import cycle


class _Forwarder:
    """A loopback listener that pipes each connection to `_backend()` and back."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Forwarder:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def _backend(self) -> tuple[str, int]:
        raise NotImplementedError

    def _record(self, data: bytes, *, upstream: bool) -> None:
        """Hook: what crossed (client -> backend when `upstream`)."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._backend())
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       upstream: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    self._record(data, upstream=upstream)
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        finally:
            writer.close()
            up_writer.close()


class RoundRobinBalancer(_Forwarder):
    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        super().__init__()
        self._backends = cycle(list(backends))
        self.counts = {b: 0 for b in backends}

    def __enter__(self) -> RoundRobinBalancer:
        super().__enter__()
        return self

    def _backend(self) -> tuple[str, int]:
        backend = next(self._backends)
        self.counts[backend] += 1
        return backend


class RecordingRelay(_Forwarder):
    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__()
        self.target = (target_host, target_port)
        self.upstream = bytearray()    # client -> target
        self.downstream = bytearray()  # target -> client

    def __enter__(self) -> RecordingRelay:
        super().__enter__()
        return self

    def _backend(self) -> tuple[str, int]:
        return self.target

    def _record(self, data: bytes, *, upstream: bool) -> None:
        (self.upstream if upstream else self.downstream).extend(data)

    def mark(self) -> tuple[int, int]:
        """A position in both directions, to read what crossed after it."""
        return len(self.upstream), len(self.downstream)

    def since(self, mark: tuple[int, int]) -> tuple[bytes, bytes]:
        return bytes(self.upstream[mark[0]:]), bytes(self.downstream[mark[1]:])
