"""Receipts in the dialects without a Binary HTTP trailer (`enclave.receipts`, the `wire`
paragraph): EHBP, Atoma and Continuum answers, whole and streamed, carry one inside the
encryption; the attested client checks it, keeps it, and refuses an answer whose receipt
is missing (stripped, or the stream cut before it), signed by a key the report does not
bind, or for another answer (`test_receipts.py` has the receipt itself and OHTTP)."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

import httpx
import pytest

import gateway.endpoint
from attestation.simulated import SimulatedPki
from attestation.workload import workload_digest
from enclave.dialect import InnerRequest
from enclave.ehbp import EhbpClient, EhbpServer, key_config
from enclave.errors import AnswerRefused
from enclave.keys import KeyRing
from enclave.receipts import (
    BOUND_KEY,
    MEMBER,
    ReceiptIssuer,
    ReceiptSigner,
    digest,
    receipt_event,
    receipt_of_event,
    split_receipt,
    with_receipt,
)
from gateway.app import Gateway, create_app
from gateway.config import ServeConfig
from proxy.attestor import Attestor
from proxy.client import GatewayClient
from proxy.dialects import make_client
from proxy.errors import GatewayResponseInvalid
from proxy.receipts import ReceiptLog
from testkit.attested import MODEL_DIGEST, TEST_WORKLOAD, simulated, trusting
from testkit.doubles import CHAT_MODEL, EMBEDDING_MODEL, DeterministicTestEngine
from tests.contract.test_dialect_contract import Damaging
from tests.unit.conftest import running
from tests.unit.enclave.test_receipts import CHAT, SIGNER

DIALECTS = ("ehbp", "atoma", "continuum")
STREAMED = json.dumps({**json.loads(CHAT), "stream": True}).encode()
both_ways = pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
each_dialect = pytest.mark.parametrize("protocol", DIALECTS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


@contextlib.asynccontextmanager
async def attested(pki: SimulatedPki, protocol: str, state,
                   damage: Callable[[bytes], bytes] | None = None,
                   ) -> AsyncIterator[tuple[Gateway, GatewayClient]]:
    """A gateway on the simulated TEE and a client that verified its report (answers
    passed through `damage` on their way back, where given)."""
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running,  # type: ignore[arg-type]
                     attestation=simulated(pki))
    async with running(app):
        plain = httpx.ASGITransport(app=app)
        client = make_client("http://gw", protocol,
                             transport=plain if damage is None else Damaging(app, damage),
                             attestation=Attestor("http://gw", trust=trusting(pki),
                                                  transport=plain),
                             keep_receipt=ReceiptLog(state).keeper("http://gw"))
        try:
            yield app, client
        finally:
            await client.aclose()


async def ask(client: GatewayClient, *, stream: bool) -> bytes:
    if stream:
        async with client.stream("POST", "/v1/chat/completions", STREAMED) as answer:
            assert answer.status == 200
            return b"".join([c async for c in answer.chunks()])
    whole = await client.request("POST", "/v1/chat/completions", CHAT)
    assert whole.status == 200
    return whole.body


@each_dialect
@both_ways
async def test_every_answer_carries_a_receipt_the_attested_client_keeps(
        pki, tmp_path, protocol, stream) -> None:
    async with attested(pki, protocol, tmp_path) as (app, client):
        answer = await ask(client, stream=stream)
        epoch = app.keyring.current().key_id
    assert b"echo:" in answer
    assert b"cloister_receipt" not in answer and b"cloister-receipt" not in answer
    if stream:
        assert answer.endswith(b"data: [DONE]\n\n")
    else:
        json.loads(answer)  # passed on as the JSON the engine answered
    [kept] = ReceiptLog(tmp_path).entries()
    kept.check()  # by the key the report bound
    assert kept.key is not None
    fields = kept.receipt.fields
    assert (fields["model"], fields["model_digest"]) == (CHAT_MODEL, MODEL_DIGEST)
    assert fields["workload"] == workload_digest(TEST_WORKLOAD).hex()
    assert fields["epoch"] == epoch


@each_dialect
async def test_errors_embeddings_and_sealed_model_lists_carry_receipts_too(
        pki, tmp_path, protocol) -> None:
    async with attested(pki, protocol, tmp_path) as (_, client):
        refused = await client.request("POST", "/v1/chat/completions", json.dumps(
            {**json.loads(CHAT), "model": "nope"}).encode())
        assert (refused.status, json.loads(refused.body)["error"]["code"]) == (
            404, "model_not_found")
        embedded = await client.request("POST", "/v1/embeddings", json.dumps(
            {"model": EMBEDDING_MODEL, "input": "x"}).encode())
        assert len(json.loads(embedded.body)["data"][0]["embedding"]) == 384
        sealed_models = client.keys.sealed_models
        assert json.loads((await client.request("GET", "/v1/models")).body)["data"]
    kept = ReceiptLog(tmp_path).entries()
    assert len(kept) == (3 if sealed_models else 2)  # Atoma's and Continuum's are clear
    assert [k.receipt.fields["model"] for k in kept][:2] == ["nope", EMBEDDING_MODEL]


# --- what an attested client refuses -------------------------------------------------------

@each_dialect
@both_ways
async def test_a_receipt_signed_by_a_key_the_report_does_not_bind_is_refused(
        pki, tmp_path, monkeypatch, protocol, stream) -> None:
    other, sign = ReceiptSigner(), ReceiptSigner.sign
    monkeypatch.setattr(ReceiptSigner, "sign", lambda self, **fields: sign(other, **fields))
    async with attested(pki, protocol, tmp_path) as (_, client):
        with pytest.raises(GatewayResponseInvalid, match="receipt_signature_invalid"):
            await ask(client, stream=stream)
    assert ReceiptLog(tmp_path).entries() == []


@each_dialect
@both_ways
async def test_a_receipt_for_another_answer_is_refused(pki, tmp_path, monkeypatch,
                                                        protocol, stream) -> None:
    sign = ReceiptSigner.sign
    monkeypatch.setattr(ReceiptSigner, "sign", lambda self, **fields: sign(
        self, **{**fields, "response": digest(b"another answer")}))
    async with attested(pki, protocol, tmp_path) as (_, client):
        with pytest.raises(GatewayResponseInvalid, match="receipt_response_mismatch"):
            await ask(client, stream=stream)


@runtime_checkable
class _Nothing(Protocol):
    def carries_nothing(self) -> None: ...


@each_dialect
@both_ways
async def test_an_answer_without_a_receipt_is_refused(pki, tmp_path, monkeypatch, protocol,
                                                      stream) -> None:
    """A gateway that signs none (where the relay cannot strip it: inside one sealed unit)."""
    monkeypatch.setattr(gateway.endpoint, "CarriesReceipts", _Nothing)
    async with attested(pki, protocol, tmp_path) as (_, client):
        with pytest.raises(GatewayResponseInvalid, match="receipt_missing"):
            await ask(client, stream=stream)


def _drop_last_frame(body: bytes) -> bytes:
    """EHBP: the stream without its last frame, cut at a frame boundary."""
    pos, last = 0, 0
    while pos < len(body):
        last = pos
        pos += 4 + struct.unpack_from(">I", body, pos)[0]
    return body[:last]


def _drop_end_chunk(body: bytes) -> bytes:
    """Atoma: the stream without its end chunk (which holds the receipt) and `[DONE]`."""
    events = [e for e in body.split(b"\n\n") if e][:-2]
    return b"".join(e + b"\n\n" for e in events)


def _without_member(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "cloister_receipt"}


def _strip_continuum_member(body: bytes) -> bytes:
    """Continuum: the sealed receipt member taken out of a whole answer or its last event
    (it sits beside the sealed fields, in the clear JSON)."""
    if body.startswith(b"{"):
        return json.dumps(_without_member(json.loads(body))).encode()
    events = [e for e in body.split(b"\n\n") if e]
    out = []
    for event in events:
        if event.startswith(b"data: {"):
            event = b"data: " + json.dumps(_without_member(json.loads(event[6:]))).encode()
        out.append(event + b"\n\n")
    return b"".join(out)


@pytest.mark.parametrize(("protocol", "stream", "cut", "reason"), [
    ("ehbp", True, _drop_last_frame, "receipt_missing"),
    ("atoma", True, _drop_end_chunk, "truncated"),
    ("continuum", False, _strip_continuum_member, "receipt_missing"),
    ("continuum", True, _strip_continuum_member, "receipt_missing"),
], ids=["ehbp-stream-cut-before-its-receipt", "atoma-stream-cut-before-its-end",
        "continuum-whole-stripped", "continuum-stream-stripped"])
async def test_a_relay_that_strips_the_receipt_or_cuts_the_stream_before_it_is_refused(
        pki, tmp_path, protocol, stream, cut, reason) -> None:
    async with attested(pki, protocol, tmp_path, damage=cut) as (_, client):
        with pytest.raises(GatewayResponseInvalid, match=reason):
            await ask(client, stream=stream)
    assert ReceiptLog(tmp_path).entries() == []


def _change_clear_field(body: bytes) -> bytes:
    """Continuum: `created`, which travels in the clear, changed in every answer object."""
    if body.startswith(b"{"):
        return json.dumps({**json.loads(body), "created": 1}).encode()
    out = []
    for event in (e for e in body.split(b"\n\n") if e):
        if event.startswith(b"data: {"):
            event = b"data: " + json.dumps({**json.loads(event[6:]), "created": 1}).encode()
        out.append(event + b"\n\n")
    return b"".join(out)


@both_ways
async def test_a_continuum_answer_whose_clear_fields_were_changed_is_refused(
        pki, tmp_path, stream) -> None:
    """Continuum seals only `choices`: the receipt's digest covers the answer as the client
    reassembles it, clear fields included."""
    async with attested(pki, "continuum", tmp_path, damage=_change_clear_field) as (_, client):
        with pytest.raises(GatewayResponseInvalid, match="receipt_response_mismatch"):
            await ask(client, stream=stream)


# --- the conventions, sans-IO ---------------------------------------------------------------

@pytest.mark.parametrize("body", [b'{"a": 1}', b"{}", b"{ }", b'{"a": [1, {}]}' + b" " * 40,
                                  b'{"a": 1 }\n'])
def test_a_receipt_written_into_a_json_object_comes_out_leaving_it_as_it_was(body) -> None:
    carried = with_receipt(body, "c2lnbmVk")
    assert json.loads(carried)[MEMBER] == "c2lnbmVk"
    assert carried.endswith(body[len(body.rstrip()):])  # the padding stays last
    assert split_receipt(carried) == (body, "c2lnbmVk")


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b"", b'{"a": "b"}',
                                  b'{"cloister_receipt":"not base64url!"}'])
def test_a_body_that_carries_no_receipt_is_left_alone(body) -> None:
    assert split_receipt(body) == (body, None)
    if not body.startswith(b"{"):
        assert with_receipt(body, "c2lnbmVk") == body


def test_a_receipt_event_is_an_sse_comment_and_nothing_else_is_one() -> None:
    event = receipt_event("c2lnbmVk")
    assert event.startswith(b":") and event.endswith(b"\n\n")
    assert receipt_of_event(event) == "c2lnbmVk"
    for other in (b"data: [DONE]\n\n", b":" + b" " * 30 + b"\n\n", event[:-1],
                  event + b"data: x\n\n", b": cloister-receipt a b\n\n"):
        assert receipt_of_event(other) is None


def test_an_ehbp_stream_that_goes_on_after_its_receipt_is_refused() -> None:
    keyring = KeyRing()
    client = EhbpClient(key_config(keyring.current()))
    client.receipts.attest({BOUND_KEY: SIGNER.public_key})
    outer, opener = client.seal(InnerRequest("POST", "/v1/chat/completions", STREAMED),
                                stream=True)
    _, responder = EhbpServer(keyring).open(outer)
    responder.sign_with(ReceiptIssuer(SIGNER, workload="", model_digests={}, epoch=lambda: 0,
                                      clock=lambda: 0).pending(outer.body))
    start = responder.start(200, "text/event-stream")
    assert opener.begin(start.status, start.headers)
    assert opener.push(responder.chunk(b"data: {}\n\n") + responder.end())[1:] == \
        [b"data: {}\n\n"]
    with pytest.raises(AnswerRefused, match="after its receipt"):
        opener.push(responder.chunk(b"data: more\n\n"))
