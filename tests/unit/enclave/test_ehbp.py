"""EHBP: the sans-IO core and its wire details (keys, stale-key problem). What every
dialect shares is in `test_dialect_contract.py`."""

from __future__ import annotations

import ehbp as tinfoil  # Tinfoil's published client (tinfoil-ehbp)
import httpx
import pytest

from enclave import ehbp
from enclave.dialect import InnerRequest, OuterRequest, OuterResponse
from enclave.errors import DecryptError, UnauthenticatedAnswer, UnknownKeyError
from enclave.keys import KeyRing
from enclave.ohttp import KeyConfig


def test_round_trip_and_one_byte_at_a_time() -> None:
    ring = KeyRing()
    sealer = ehbp.RequestSealer(ehbp.key_config(ring.current()))
    body = sealer.seal(b"hello ") + sealer.seal(b"world")
    plaintext, responder = ehbp.open_request(ring, sealer.encapsulated_key_header, body)
    assert plaintext == b"hello world"
    wire = responder.seal(b"data: 1\n\n") + responder.seal(b"data: 2\n\n")
    opener = sealer.response_opener(responder.nonce_header)
    out = []
    for i in range(len(wire)):
        out += opener.push(wire[i:i + 1])
    opener.finish()
    assert out == [b"data: 1\n\n", b"data: 2\n\n"]


def test_response_frames_cannot_be_reordered_or_altered() -> None:
    ring = KeyRing()
    sealer = ehbp.RequestSealer(ehbp.key_config(ring.current()))
    _, responder = ehbp.open_request(ring, sealer.encapsulated_key_header, sealer.seal(b"x"))
    first, second = responder.seal(b"one"), responder.seal(b"two")
    with pytest.raises(DecryptError):
        sealer.response_opener(responder.nonce_header).push(second + first)
    bad = bytearray(first)
    bad[-1] ^= 1
    with pytest.raises(DecryptError):
        sealer.response_opener(responder.nonce_header).push(bytes(bad))
    opener = sealer.response_opener(responder.nonce_header)
    opener.push(first[:-3])
    with pytest.raises(DecryptError):
        opener.finish()  # a partial frame


def test_stale_key_after_grace_is_a_key_config_problem() -> None:
    now = [0.0]
    ring = KeyRing(rotation_seconds=10, grace_seconds=1, clock=lambda: now[0])
    sealer = ehbp.RequestSealer(ehbp.key_config(ring.current()))
    body = sealer.seal(b"x")
    now[0] = 10.5
    assert ehbp.open_request(ring, sealer.encapsulated_key_header, body)[0] == b"x"  # grace
    now[0] = 12.0
    with pytest.raises(UnknownKeyError):
        ehbp.open_request(ring, sealer.encapsulated_key_header, body)


@pytest.mark.parametrize("header", ["zz", "00" * 31, "00" * 33])
def test_malformed_encapsulated_key_is_a_decrypt_error(header) -> None:
    with pytest.raises(DecryptError):
        ehbp.open_request(KeyRing(), header, b"")


async def test_keys_are_published_with_key_id_0_and_aes_256(gateway_app) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        r = await raw.get("/.well-known/hpke-keys")
    assert r.headers["content-type"] == "application/ohttp-keys"  # compared exactly by Tinfoil
    config = KeyConfig.decode(r.content)  # one bare configuration, not a list
    assert (config.key_id, config.suites) == (0, (ehbp.SUITE,))
    assert config.public_key == gateway_app.keyring.current().public_key
    identity = tinfoil.ServerIdentity.unmarshal_public_config(r.content)  # Tinfoil's parser
    assert identity.public_key_bytes() == config.public_key


async def test_gateway_answers_422_problem_for_unknown_key(gateway_app) -> None:
    other = ehbp.RequestSealer(ehbp.key_config(KeyRing().current()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_app),
                                 base_url="http://gw") as raw:
        r = await raw.post("/v1/chat/completions", content=other.seal(b"{}"),
                           headers={ehbp.ENCAPSULATED_KEY_HEADER: other.encapsulated_key_header})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == ehbp.KEY_CONFIG_PROBLEM_TYPE


def _sealed_answer(status: int, body: bytes) -> tuple[ehbp.EhbpOpener, OuterResponse]:
    ring = KeyRing()
    client = ehbp.EhbpClient(ehbp.key_config(ring.current()))
    outer, opener = client.seal(InnerRequest("POST", "/v1/chat/completions", b"{}"),
                                stream=False)
    _, responder = ehbp.EhbpServer(ring).open(OuterRequest(
        outer.method, outer.path, outer.headers, outer.body))
    answer = responder.whole(200, "application/json", body)
    return opener, OuterResponse(status, answer.headers, answer.body)


def test_a_sealed_answer_with_its_status_changed_is_refused_unless_an_error() -> None:
    """EHBP leaves the status in the clear: our client accepts a non-200 only when the
    sealed body is an error object."""
    opener, answer = _sealed_answer(203, b'{"choices": []}')
    with pytest.raises(UnauthenticatedAnswer):
        opener.whole(answer)
    opener, answer = _sealed_answer(404, b'{"error": {"code": "not_found"}}')
    assert opener.whole(answer).status == 404
