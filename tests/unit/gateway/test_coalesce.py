"""Tokens on a timer: the first at once, then what arrived per interval in one piece, and
in constant-rate mode an empty piece when nothing did."""

from __future__ import annotations

import asyncio

import pytest

from gateway.coalesce import coalesced

END = b""


async def _source(queue: asyncio.Queue[bytes]):
    while (item := await queue.get()) != END:
        yield item


async def test_the_first_token_goes_at_once_and_later_ones_together() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    pieces = coalesced(_source(queue), 0.05)
    await queue.put(b"a")
    assert await anext(pieces) == b"a"  # no interval waited for the first
    for token in (b"b", b"c", b"d"):
        await queue.put(token)
    assert await anext(pieces) == b"bcd"
    await queue.put(END)
    with pytest.raises(StopAsyncIteration):
        await anext(pieces)


async def test_constant_rate_sends_an_empty_piece_when_no_token_is_ready() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    pieces = coalesced(_source(queue), 0.02, constant_rate=True)
    await queue.put(b"a")
    assert await anext(pieces) == b"a"
    assert await anext(pieces) == b""  # nothing arrived: a dummy, padded by the dialect
    await queue.put(b"b")
    got = [await anext(pieces)]
    while got[-1] == b"":
        got.append(await anext(pieces))
    assert got[-1] == b"b"
    await queue.put(END)
    rest = [p async for p in pieces]
    assert set(rest) <= {b""}


async def test_an_engine_failure_reaches_the_relay() -> None:
    async def failing():
        yield b"a"
        raise RuntimeError("engine died")

    pieces = coalesced(failing(), 0.01)
    assert await anext(pieces) == b"a"
    with pytest.raises(RuntimeError, match="engine died"):
        async for _ in pieces:
            pass


async def test_the_end_of_a_stream_is_not_held_back_by_the_timer() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    pieces = coalesced(_source(queue), 10.0)  # an interval no test would wait out
    await queue.put(b"a")
    assert await anext(pieces) == b"a"
    await queue.put(b"b")
    await queue.put(END)
    started = asyncio.get_running_loop().time()
    assert await anext(pieces) == b"b"
    with pytest.raises(StopAsyncIteration):
        await anext(pieces)
    assert asyncio.get_running_loop().time() - started < 5
