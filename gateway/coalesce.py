"""Streamed tokens sent on a timer, so that chunk count and timing say less.

`coalesced` relays the engine's first chunk at once (time to first token is unchanged),
then every `interval` seconds whatever arrived since, in one piece; when the engine has
finished, what is left goes at once (the end of a stream is seen anyway; waiting out
the interval only cost every request up to one interval). With `constant_rate`
it also sends an empty piece when nothing arrived, until the engine is done: the
dialect pads it like any chunk (`enclave.padding`), so an observer sees one chunk of the
same size every interval whether or not a token was ready.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


async def coalesced(chunks: AsyncIterator[bytes], interval: float, *,
                    constant_rate: bool = False) -> AsyncIterator[bytes]:
    if interval <= 0:
        async for chunk in chunks:
            yield chunk
        return
    pending: list[bytes] = []
    arrived = asyncio.Event()
    finished = asyncio.Event()
    failure: list[BaseException] = []
    done = False

    async def pump() -> None:
        nonlocal done
        try:
            async for chunk in chunks:
                pending.append(chunk)
                arrived.set()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer below
            failure.append(exc)
        finally:
            done = True
            arrived.set()
            finished.set()

    task = asyncio.create_task(pump())
    try:
        await arrived.wait()
        while True:
            if pending:
                batch = b"".join(pending)
                pending.clear()
                yield batch
            elif done:
                break
            elif constant_rate:
                yield b""
            if done and not pending:
                break
            if constant_rate:  # the timer alone decides: the end is not told apart
                await asyncio.sleep(interval)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await finished.wait()
        if failure:
            raise failure[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
