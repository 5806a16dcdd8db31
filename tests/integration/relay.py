"""A recording TCP relay (a test tool): forwards a loopback port to another and keeps
every byte that crosses it, in both directions, so a test can grep the wire."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class RecordingRelay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.upstream = bytearray()    # client -> target
        self.downstream = bytearray()  # target -> client
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RecordingRelay:
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

    def mark(self) -> tuple[int, int]:
        """A position in both directions, to read what crossed after it."""
        return len(self.upstream), len(self.downstream)

    def since(self, mark: tuple[int, int]) -> tuple[bytes, bytes]:
        return bytes(self.upstream[mark[0]:]), bytes(self.downstream[mark[1]:])

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       record: bytearray) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    record += data
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, self.upstream),
                                 pipe(up_reader, writer, self.downstream))
        finally:
            writer.close()
            up_writer.close()
