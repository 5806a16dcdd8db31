"""Chunked OHTTP: round trips, streaming one byte at a time, and property tests showing
that truncation, reordering, duplication, bit flips and empty chunks are all detected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.errors import DecryptError, RequestRefused, UnknownKeyError
from enclave.keys import KeyRing
from enclave.ohttp import ChunkedRequestOpener, ChunkedRequestSealer
from enclave.ohttp.protocol import OFFERED_SUITES
from enclave.ohttp.varint import decode_varint

chunks_st = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=8)


def _frames(body: bytes, start: int) -> list[bytes]:
    """Split a chunk stream (after its prefix) into its frames, the final one last."""
    frames, pos = [], start
    while True:
        size, after = decode_varint(body, pos)
        if size == 0:
            frames.append(body[pos:])
            return frames
        frames.append(body[pos:after + size])
        pos = after + size


def exchange(keyring: KeyRing, request_chunks: list[bytes], response_chunks: list[bytes],
             suite=OFFERED_SUITES[0]):
    """A whole chunked exchange; returns what the client receives and its opener."""
    sealer = ChunkedRequestSealer(keyring.current().key_config(), suite=suite)
    wire = sealer.header + b"".join(sealer.seal_chunk(c) for c in request_chunks)
    wire += sealer.seal_final(b"")
    server = ChunkedRequestOpener(keyring)
    got = server.push(wire)
    got.append(server.finish())
    assert b"".join(got) == b"".join(request_chunks)
    resp = server.response_sealer()
    body = resp.start() + b"".join(resp.seal_chunk(c) for c in response_chunks)
    body += resp.seal_final(b"end")
    return body, sealer.response_opener()


@pytest.fixture(scope="module")
def keyring() -> KeyRing:
    return KeyRing()


@pytest.mark.parametrize("suite", OFFERED_SUITES)
def test_round_trip_in_every_offered_suite(keyring, suite) -> None:
    body, opener = exchange(keyring, [b"req-1", b"req-2"], [b"a", b"bc"], suite)
    assert opener.push(body) == [b"a", b"bc"]
    assert opener.finish() == b"end"


def test_response_opens_when_fed_one_byte_at_a_time(keyring) -> None:
    body, opener = exchange(keyring, [b"hello"], [b"data: 1\n\n", b"data: 2\n\n"])
    out = []
    for i in range(len(body)):
        out += opener.push(body[i:i + 1])
    assert out == [b"data: 1\n\n", b"data: 2\n\n"]
    assert opener.finish() == b"end"


def test_request_opens_when_fed_one_byte_at_a_time(keyring) -> None:
    sealer = ChunkedRequestSealer(keyring.current().key_config())
    wire = sealer.header + sealer.seal_chunk(b"abc") + sealer.seal_final(b"xyz")
    server = ChunkedRequestOpener(keyring)
    out = []
    for i in range(len(wire)):
        out += server.push(wire[i:i + 1])
    assert out == [b"abc"]
    assert server.finish() == b"xyz"


@settings(max_examples=40, deadline=None)
@given(chunks=chunks_st, data=st.data())
def test_any_truncation_is_detected(keyring, chunks, data) -> None:
    body, opener = exchange(keyring, [b"q"], chunks)
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    with pytest.raises(RequestRefused):
        opener.push(body[:cut])
        opener.finish()


@settings(max_examples=40, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=32), min_size=2, max_size=6),
       data=st.data())
def test_any_reordering_is_detected(keyring, chunks, data) -> None:
    body, opener = exchange(keyring, [b"q"], chunks)
    nonce_size = 16
    frames = _frames(body, nonce_size)
    order = data.draw(st.permutations(range(len(frames) - 1)))
    if order == sorted(order) or [frames[i] for i in order] == frames[:-1]:
        return  # not a reordering of the bytes
    reordered = body[:nonce_size] + b"".join(frames[i] for i in order) + frames[-1]
    with pytest.raises(RequestRefused):
        opener.push(reordered)
        opener.finish()


@settings(max_examples=30, deadline=None)
@given(chunks=chunks_st, data=st.data())
def test_any_duplication_is_detected(keyring, chunks, data) -> None:
    body, opener = exchange(keyring, [b"q"], chunks)
    frames = _frames(body, 16)
    i = data.draw(st.integers(min_value=0, max_value=len(frames) - 2))
    dup = body[:16] + b"".join(frames[:i + 1]) + frames[i] + b"".join(frames[i + 1:])
    with pytest.raises(RequestRefused):
        opener.push(dup)
        opener.finish()


@settings(max_examples=60, deadline=None)
@given(chunks=chunks_st, data=st.data())
def test_any_bit_flip_is_detected(keyring, chunks, data) -> None:
    body, opener = exchange(keyring, [b"q"], chunks)
    bit = data.draw(st.integers(min_value=0, max_value=len(body) * 8 - 1))
    flipped = bytearray(body)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(RequestRefused):
        opener.push(bytes(flipped))
        opener.finish()


def test_empty_non_final_chunk_is_rejected(keyring) -> None:
    sealer = ChunkedRequestSealer(keyring.current().key_config())
    with pytest.raises(ValueError):
        sealer.seal_chunk(b"")
    # A peer that seals one anyway: 16 bytes of tag around nothing.
    ct = sealer._context.seal(b"", b"")
    server = ChunkedRequestOpener(keyring)
    with pytest.raises(DecryptError):
        server.push(sealer.header + bytes([len(ct)]) + ct)


def test_request_for_unknown_key_id_says_unknown_key(keyring) -> None:
    config = keyring.current().key_config()
    other = type(config)(config.key_id ^ 0x55, config.kem_id, config.public_key, config.suites)
    sealer = ChunkedRequestSealer(other)
    with pytest.raises(UnknownKeyError):
        ChunkedRequestOpener(keyring).push(sealer.header + sealer.seal_final(b"x"))


def test_request_to_another_key_fails_as_generic_decrypt(keyring) -> None:
    config = KeyRing().current().key_config()  # same key id 0, different key
    sealer = ChunkedRequestSealer(config)
    server = ChunkedRequestOpener(keyring)
    server.push(sealer.header + sealer.seal_final(b"x"))
    with pytest.raises(DecryptError) as err:
        server.finish()
    assert str(err.value) == "decryption failed"
