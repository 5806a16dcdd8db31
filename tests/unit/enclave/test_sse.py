"""SSE framing shared by the per-event dialects and their clients."""

from __future__ import annotations

from enclave import sse


def test_data_of_keeps_only_data_events_in_order() -> None:
    chunk = sse.event(b'{"a":1}') + b": keep-alive\n\n" + sse.event(sse.DONE)
    assert sse.data_of(chunk) == [b'{"a":1}', b"[DONE]"]


def test_reader_reassembles_events_split_anywhere() -> None:
    wire = sse.event(b"one") + sse.event(b"two") + b"data: thr"
    reader = sse.EventReader()
    got = []
    for i in range(len(wire)):
        got += reader.push(wire[i:i + 1])
    assert got == [b"one", b"two"]
    assert reader.pending == b"data: thr"
