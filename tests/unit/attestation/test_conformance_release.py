"""`cloister conformance verify-release-statement`: the release-statement verifier in the
suite's adapter shape, over a statement signed here and its mutations, each rejected
with its own code; input that is not a statement is malformed."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json

import pytest

from attestation.conformance import ACCEPT, MALFORMED, REJECT, run
from attestation.statement import generate_key, public_pem, sign_statement
from testkit.attested import accepting

KEY = generate_key()
OTHER = generate_key("ed25519")
VALUES = dataclasses.replace(accepting(), version=3)
NOW = int(dt.datetime.now(dt.UTC).timestamp())


def _input(envelope: bytes | None = None, *, key=KEY, when: int = NOW, **extra) -> dict:
    envelope = sign_statement(VALUES, KEY) if envelope is None else envelope
    return {"schema_version": "1", "envelope_b64": base64.b64encode(envelope).decode(),
            "trusted_keys_pem": public_pem(key.public_key()).decode(),
            "verification_time_unix": when, **extra}


def _verdict(document: dict) -> tuple[int, dict]:
    return run("verify-release-statement", json.dumps(document))


def _resigned_payload(change) -> bytes:
    """The envelope with its payload changed after signing."""
    outer = json.loads(sign_statement(VALUES, KEY))
    payload = json.loads(base64.b64decode(outer["payload"]))
    change(payload)
    outer["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    return json.dumps(outer).encode()


def test_a_signed_statement_is_accepted_with_its_facts() -> None:
    code, output = _verdict(_input(expected_workload_digest_hex=next(iter(VALUES.workloads)),
                                   min_version=3))
    assert code == ACCEPT, output
    assert output["outputs"]["version"] == 3
    assert output["outputs"]["workload_digests"] == sorted(VALUES.workloads)


def _flip_signature() -> bytes:
    outer = json.loads(sign_statement(VALUES, KEY))
    sig = bytearray(base64.b64decode(outer["signatures"][0]["sig"]))
    sig[10] ^= 0x01
    outer["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(outer).encode()


@pytest.mark.parametrize(("document", "code"), [
    (_input(_flip_signature()), "SIGNATURE_INVALID"),
    (_input(_resigned_payload(lambda p: p["predicate"].update(version=4))),
     "SIGNATURE_INVALID"),
    (_input(key=OTHER), "KEY_UNTRUSTED"),
    (_input(when=NOW + 400 * 86400), "STATEMENT_EXPIRED"),
    (_input(expected_workload_digest_hex="ab" * 32), "WORKLOAD_NOT_LISTED"),
    (_input(min_version=4), "VERSION_ROLLBACK"),
], ids=["flipped-signature", "payload-changed", "untrusted-key", "expired",
        "workload-not-listed", "rollback"])
def test_a_mutated_statement_is_rejected_with_its_code(document, code) -> None:
    verdict, output = _verdict(document)
    assert (verdict, output.get("rejection")) == (REJECT, {"code": code}), output


def test_what_is_not_a_statement_is_malformed() -> None:
    assert _verdict(_input(b"not json"))[0] == MALFORMED
    assert _verdict(_input(b'{"payload": "x"}'))[0] == MALFORMED
    assert _verdict({**_input(), "trusted_keys_pem": "no key here"})[0] == MALFORMED
