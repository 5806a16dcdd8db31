"""`call_engine`: runs an ASGI engine in-process and relays its answer as produced."""

from __future__ import annotations

import asyncio

import pytest

from enclave.engine import EngineRequest, call_engine


async def _streaming_app(scope, receive, send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(3):
        await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(),
                    "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def test_chunks_arrive_in_order_and_end() -> None:
    answer = await call_engine(_streaming_app, EngineRequest("POST", "/v1/chat/completions"))
    assert answer.status == 200
    assert answer.is_event_stream
    assert b"".join([c async for c in answer.chunks()]) == (
        b"data: 0\n\ndata: 1\n\ndata: 2\n\n")


async def test_events_already_queued_are_coalesced_and_fresh_ones_are_not() -> None:
    release = asyncio.Event()

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):  # three at once: the engine ran ahead of the client
            await send({"type": "http.response.body", "body": b"a%d" % i, "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b"late", "more_body": False})

    answer = await call_engine(app, EngineRequest("POST", "/v1/chat/completions"))
    chunks = answer.chunks()
    await asyncio.sleep(0.01)
    assert await chunks.__anext__() == b"a0a1a2"
    release.set()
    assert [c async for c in chunks] == [b"late"]


async def test_error_after_queued_data_still_delivers_the_data_first() -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"kept", "more_body": True})
        raise RuntimeError("engine died")

    answer = await call_engine(app, EngineRequest("POST", "/v1/chat/completions"))
    await asyncio.sleep(0.01)
    got = []
    with pytest.raises(RuntimeError):
        async for chunk in answer.chunks():
            got.append(chunk)
    assert got == [b"kept"]


async def test_request_body_and_scope_reach_the_app() -> None:
    seen = {}

    async def app(scope, receive, send) -> None:
        seen["path"], seen["headers"] = scope["path"], dict(scope["headers"])
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    answer = await call_engine(app, EngineRequest("POST", "/v1/completions", b'{"a":1}',
                                                  request_id="rid"))
    assert await answer.read() == b"ok"
    assert seen == {"path": "/v1/completions", "body": b'{"a":1}', "headers": {
        b"content-type": b"application/json", b"content-length": b"7", b"x-request-id": b"rid"}}


async def test_error_before_response_start_is_raised() -> None:
    async def app(scope, receive, send) -> None:
        raise LookupError("boom")

    with pytest.raises(LookupError):
        await call_engine(app, EngineRequest("POST", "/v1/chat/completions"))


async def test_error_mid_stream_is_raised_to_the_reader() -> None:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        raise RuntimeError("engine died")

    answer = await call_engine(app, EngineRequest("POST", "/v1/chat/completions"))
    got = []
    with pytest.raises(RuntimeError):
        async for chunk in answer.chunks():
            got.append(chunk)
    assert got == [b"one"]


async def test_closing_the_answer_cancels_the_engine_request() -> None:
    cancelled = asyncio.Event()

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
        except asyncio.CancelledError:
            cancelled.set()
            raise

    answer = await call_engine(app, EngineRequest("POST", "/v1/chat/completions"))
    async for _ in answer.chunks():
        break
    await asyncio.wait_for(cancelled.wait(), 1)


async def test_engine_sees_disconnect_when_client_leaves() -> None:
    gone = asyncio.Event()
    seen = []

    async def app(scope, receive, send) -> None:
        await receive()
        seen.append((await receive())["type"])
        await send({"type": "http.response.start", "status": 499, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    asyncio.get_running_loop().call_later(0.01, gone.set)
    answer = await call_engine(app, EngineRequest("POST", "/v1/chat/completions"),
                               wait_for_disconnect=gone.wait)
    assert answer.status == 499
    assert seen == ["http.disconnect"]
