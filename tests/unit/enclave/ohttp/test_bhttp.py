"""Binary HTTP (RFC 9292): both framings, truncation at section boundaries, streaming."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave.errors import DecryptError
from enclave.ohttp.bhttp import (
    ContentChunk,
    Request,
    Response,
    ResponseEnd,
    ResponseHead,
    StreamedResponseParser,
    decode_request,
    decode_response,
    encode_content_chunk,
    encode_request,
    encode_response,
    encode_response_end,
    encode_response_head,
)
from enclave.ohttp.varint import decode_varint, encode_varint

text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20)
fields = st.lists(st.tuples(text.map(str.lower).filter(bool), text), max_size=4).map(tuple)


def test_rfc9458_example_request_decodes_despite_truncation() -> None:
    req = decode_request(bytes.fromhex("00034745540568747470730b6578616d706c652e636f6d012f"))
    assert (req.method, req.scheme, req.authority, req.path) == ("GET", "https", "example.com", "/")
    assert req.headers == () and req.content == b""


def test_rfc9458_example_response_decodes() -> None:
    assert decode_response(bytes.fromhex("0140c8")).status == 200


@given(st.integers(min_value=0, max_value=(1 << 62) - 1))
def test_varint_round_trip(n: int) -> None:
    assert decode_varint(encode_varint(n)) == (n, len(encode_varint(n)))


@given(method=st.sampled_from(["GET", "POST"]), path=text, headers=fields,
       content=st.binary(max_size=200), indeterminate=st.booleans())
def test_request_round_trip(method, path, headers, content, indeterminate) -> None:
    req = Request(method, "/" + path, "https", "gw", headers, content)
    assert decode_request(encode_request(req, indeterminate=indeterminate)) == req


@given(status=st.integers(min_value=200, max_value=599), headers=fields,
       content=st.binary(max_size=200))
def test_known_length_response_round_trip(status, headers, content) -> None:
    resp = Response(status, headers, content)
    assert decode_response(encode_response(resp)) == resp


def test_padding_is_accepted_and_garbage_is_not() -> None:
    wire = encode_response(Response(200, (("a", "b"),), b"x"))
    assert decode_response(wire + b"\x00\x00\x00").content == b"x"
    with pytest.raises(DecryptError):
        decode_response(wire + b"\x01")


@pytest.mark.parametrize("bad", [b"", b"\x05", b"\x01\x40", b"\x01\x41\x90\x05ab"])
def test_malformed_responses_are_errors(bad: bytes) -> None:
    with pytest.raises(DecryptError):
        decode_response(bad)


def _streamed(status=200, headers=(("content-type", "text/event-stream"),),
              pieces=(b"data: 1\n\n", b"data: 2\n\n")) -> bytes:
    return (encode_response_head(status, headers)
            + b"".join(encode_content_chunk(p) for p in pieces) + encode_response_end())


def test_streamed_response_parses_one_byte_at_a_time() -> None:
    wire = _streamed()
    parser = StreamedResponseParser()
    events = []
    for i in range(len(wire)):
        events += parser.push(wire[i:i + 1])
    parser.finish()
    assert events == [ResponseHead(200, (("content-type", "text/event-stream"),)),
                      ContentChunk(b"data: 1\n\n"), ContentChunk(b"data: 2\n\n"),
                      ResponseEnd(())]


def test_streamed_response_matches_the_whole_message_decoder() -> None:
    resp = decode_response(_streamed())
    assert resp.content == b"data: 1\n\ndata: 2\n\n"
    assert resp.header("content-type") == "text/event-stream"


def test_truncated_streamed_response_is_an_error() -> None:
    parser = StreamedResponseParser()
    parser.push(_streamed()[:-1])
    with pytest.raises(DecryptError):
        parser.finish()


def test_empty_content_chunk_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode_content_chunk(b"")
