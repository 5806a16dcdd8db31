"""Receipts (`enclave.receipts`): every OHTTP answer carries one inside its encryption,
signed by the key the attestation report binds, for the sealed request received and the
plaintext answered; an attested client checks it and keeps it, and refuses an answer whose
receipt is missing, signed by another key, or for another request or answer."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import rfc8785

from attestation.simulated import SimulatedPki
from attestation.workload import workload_digest
from enclave.errors import AnswerRefused
from enclave.keys import KeyRing
from enclave.ohttp.dialect import OhttpClient, OhttpServer
from enclave.receipts import (
    ReceiptError,
    ReceiptIssuer,
    ReceiptSigner,
    digest,
    verify,
)
from gateway.app import create_app
from gateway.config import ServeConfig
from proxy.attestor import Attestor
from proxy.dialects import make_client
from proxy.receipts import ReceiptLog
from testkit.attested import MODEL_DIGEST, TEST_WORKLOAD, simulated, trusting
from testkit.doubles import CHAT_MODEL, DeterministicTestEngine
from tests.unit.conftest import running

PROMPT = "a private prompt"  # spaces: never inside hex or base64
CHAT = json.dumps({"model": CHAT_MODEL, "max_tokens": 3,
                   "messages": [{"role": "user", "content": PROMPT}]}).encode()
SIGNER = ReceiptSigner()


def _signed(**changes) -> str:
    fields = {"request": digest(b"sealed"), "response": digest(b"answer"), "model": "m",
              "model_digest": "", "workload": "", "time": 1, "epoch": 0, **changes}
    return SIGNER.sign(**fields).wire


def test_a_receipt_is_jcs_json_signed_with_ed25519_and_versioned() -> None:
    wire = _signed()
    whole = json.loads(base64.urlsafe_b64decode(wire + "=" * (-len(wire) % 4)))
    assert whole["v"] == 1 and set(whole) >= {"request", "response", "sig", "workload"}
    unsigned = {k: v for k, v in whole.items() if k != "sig"}
    assert rfc8785.dumps(whole).decode() == json.dumps(whole, sort_keys=True,
                                                        separators=(",", ":"))
    receipt = verify(wire, bound_key=SIGNER.public_key, request=b"sealed",
                     response_digest=digest(b"answer"))
    assert receipt.fields == unsigned


@pytest.mark.parametrize(("wire", "key", "sent", "answer", "reason"), [
    (None, SIGNER.public_key, b"sealed", b"answer", "receipt_missing"),
    ("not a receipt", SIGNER.public_key, b"sealed", b"answer", "receipt_malformed"),
    (_signed(), ReceiptSigner().public_key, b"sealed", b"answer", "receipt_signature_invalid"),
    (_signed(), None, b"sealed", b"answer", "receipt_key_not_attested"),
    (_signed(), SIGNER.public_key, b"another request", b"answer", "receipt_request_mismatch"),
    (_signed(), SIGNER.public_key, b"sealed", b"another answer", "receipt_response_mismatch"),
], ids=["missing", "malformed", "unattested-key", "no-key-bound", "other-request",
        "other-answer"])
def test_a_receipt_that_does_not_hold_is_refused(wire, key, sent, answer, reason) -> None:
    with pytest.raises(ReceiptError) as refused:
        verify(wire, bound_key=key, request=sent, response_digest=digest(answer))
    assert refused.value.reason == reason


def test_a_receipt_changed_after_signing_is_refused() -> None:
    wire = _signed()
    whole = json.loads(base64.urlsafe_b64decode(wire + "=" * (-len(wire) % 4)))
    whole["model"] = "another-model"
    forged = base64.urlsafe_b64encode(rfc8785.dumps(whole)).rstrip(b"=").decode()
    with pytest.raises(ReceiptError, match="receipt_signature_invalid"):
        verify(forged, bound_key=SIGNER.public_key, request=b"sealed",
               response_digest=digest(b"answer"))


# --- end to end: an attested client keeps the receipts it checked -------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_every_ohttp_answer_carries_a_receipt_the_attested_client_keeps(
        tmp_path, stream) -> None:
    pki = SimulatedPki.load_or_create(tmp_path / "pki")
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running,
                     attestation=simulated(pki))
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        client = make_client("http://gw", "ohttp", transport=transport, attestation=Attestor(
            "http://gw", trust=trusting(pki), transport=transport),
            keep_receipt=ReceiptLog(tmp_path / "state").keeper("http://gw"))
        if stream:
            streamed = json.dumps({**json.loads(CHAT), "stream": True}).encode()
            async with client.stream("POST", "/v1/chat/completions", streamed) as answer:
                assert answer.status == 200
                assert b"[DONE]" in b"".join([c async for c in answer.chunks()])
        else:
            assert (await client.request("POST", "/v1/chat/completions", CHAT)).status == 200
        dialect = await client.dialect()
        await client.aclose()
    assert isinstance(dialect, OhttpClient)
    [receipt] = dialect.receipts.kept
    assert receipt.fields["model"] == CHAT_MODEL
    assert receipt.fields["model_digest"] == MODEL_DIGEST
    assert receipt.fields["workload"] == workload_digest(TEST_WORKLOAD).hex()
    assert receipt.fields["epoch"] == app.keyring.current().key_id
    [kept] = ReceiptLog(tmp_path / "state").entries()  # kept on disk for later
    assert kept.receipt == receipt and kept.gateway == "http://gw"
    kept_bytes = (tmp_path / "state" / "receipts.jsonl").read_bytes()
    assert PROMPT.encode() not in kept_bytes and b"echo: " not in kept_bytes  # digests only


def test_cloister_receipts_lists_shows_and_verifies_again_offline(tmp_path, capsys) -> None:
    from cli.main import main

    log = ReceiptLog(tmp_path)
    keep = log.keeper("https://gw.example")
    for n in range(2):
        keep(SIGNER.sign(request=digest(b"r%d" % n), response=digest(b"a"), model="m",
                         model_digest="", workload="w", time=n, epoch=0), SIGNER.public_key)
    assert main(["receipts", "list", "--state-dir", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["receipts", "show", "2", "--state-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["request"] == digest(b"r1")
    assert main(["receipts", "verify", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("\tVERIFIED") == 2
    # someone edits a kept receipt: it no longer verifies, and says why
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[0])
    wire = entry["receipt"]
    whole = json.loads(base64.urlsafe_b64decode(wire + "=" * (-len(wire) % 4)))
    whole["model"] = "another"
    entry["receipt"] = base64.urlsafe_b64encode(rfc8785.dumps(whole)).rstrip(b"=").decode()
    log.path.write_text("\n".join([json.dumps(entry), lines[1]]) + "\n")
    assert main(["receipts", "verify", "--state-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1\tNOT VERIFIED\treceipt_signature_invalid" in out and "2\tVERIFIED" in out
    assert main(["receipts", "show", "9", "--state-dir", str(tmp_path)]) == 1


# --- sans-IO: what an attested client refuses -------------------------------------------

def _exchange(*, sign_with: ReceiptSigner | None, bound: bytes, stream: bool) -> None:
    """One request sealed by an attested client (receipt key `bound`), opened and answered
    by the OHTTP server with receipts from `sign_with` (None: none), opened by the client."""
    keyring = KeyRing()
    server = OhttpServer(keyring)
    client = OhttpClient(keyring.key_configs()[0])
    client.receipts.key, client.receipts.required = bound, True
    from enclave.dialect import InnerRequest

    outer, opener = client.seal(InnerRequest("POST", "/v1/chat/completions", CHAT),
                                stream=stream)
    _, responder = server.open(outer)
    if sign_with is not None:
        issuer = ReceiptIssuer(sign_with, workload="", model_digests={}, epoch=lambda: 0,
                               clock=lambda: 0)
        responder.sign_with(issuer.pending(outer.body))
    answer = responder.whole(200, "application/json", b'{"ok": true}')
    opener.whole(answer)


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_without_its_receipt_or_with_another_key_s_is_refused(stream) -> None:
    _exchange(sign_with=SIGNER, bound=SIGNER.public_key, stream=stream)  # holds
    with pytest.raises(AnswerRefused, match="receipt_missing"):
        _exchange(sign_with=None, bound=SIGNER.public_key, stream=stream)
    with pytest.raises(AnswerRefused, match="receipt_signature_invalid"):
        _exchange(sign_with=ReceiptSigner(), bound=SIGNER.public_key, stream=stream)


@pytest.mark.parametrize("model", ["m", "modèle-日本", "quote\"back\\slash", "ctl\x01\x1f\n",
                                   "\u2028sep", "emoji-\U0001F600", "/slash", "\x7f"])
def test_the_receipt_s_canonical_form_is_jcs(model) -> None:
    from enclave.receipts import canonical

    fields = {"v": 1, "request": digest(b"a"), "response": digest(b"b"), "model": model,
              "model_digest": "", "workload": "w", "time": 2**53 - 1, "epoch": -3}
    assert canonical(fields) == rfc8785.dumps(fields)
    with pytest.raises(rfc8785.IntegerDomainError):  # refused alike past JSON's integers
        canonical({**fields, "time": 2**60})
