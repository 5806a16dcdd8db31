"""`cloister conformance`: the SEV-SNP verifier as a third-party conformance suite drives
it (the adapter contract of tinfoilsh/tinfoil-conformance: the stage named, JSON on stdin,
the verdict as the exit code), over the real Milan report and mutated copies, each
rejected at the step that must refuse it."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from attestation.conformance import ACCEPT, MALFORMED, REJECT, UNSUPPORTED, run

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "test-vectors" / "snp"
IN_WINDOW = 1_735_689_600  # 2025-01-01: inside the VCEK's validity


def _input(report: bytes | None = None, **extra) -> dict:
    raw = (VECTORS / "milan-report.bin").read_bytes() if report is None else report
    return {"schema_version": "1",
            "attestation_doc_b64": base64.b64encode(gzip.compress(raw)).decode(),
            "vcek_der_b64": base64.b64encode((VECTORS / "milan-vcek.der").read_bytes()).decode(),
            "expiration_check_date_unix": IN_WINDOW, **extra}


def _verdict(document: dict) -> tuple[int, dict]:
    return run("verify-attestation-sev", json.dumps(document))


def _report() -> bytearray:
    return bytearray((VECTORS / "milan-report.bin").read_bytes())


def test_the_real_milan_report_is_accepted_with_its_facts() -> None:
    code, output = _verdict(_input())
    assert code == ACCEPT, output
    assert output["outputs"]["measurement"]["registers"][0].startswith("b07af962")
    assert output["outputs"]["body_fields"]["report_data_hex"].startswith("0102030405")


def _chain(product: str) -> tuple[str, str]:
    """AMD's (ASK, ARK) PEMs for `product` (milan or genoa)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = (VECTORS / f"{product}-ask-ark.pem").read_bytes()
    ask, ark = (c.public_bytes(Encoding.PEM).decode()
                for c in x509.load_pem_x509_certificates(pem))
    return ask, ark


def _roots(*, ask: str, ark: str) -> dict:
    return _input(ask_pem=_chain(ask)[0], amd_root_ca_pem=_chain(ark)[1])


def _flipped(offset: int) -> bytes:
    raw = _report()
    raw[offset] ^= 0x01
    return bytes(raw)


@pytest.mark.parametrize(("document", "code"), [
    (lambda: _input(_flipped(0x2A0)), "REPORT_SIGNATURE_INVALID"),       # signature byte
    (lambda: _input(_flipped(0x90)), "REPORT_SIGNATURE_INVALID"),        # measurement
    (lambda: _input(bytes(_report()[:-1])), "REPORT_TRUNCATED"),
    (lambda: _input(b"\x09" + bytes(_report()[1:])), "WRONG_REPORT_VERSION"),
    (lambda: _input(policy={"min_tcb_snp_spl": 99}), "TCB_OUT_OF_DATE"),  # below the floor
    (lambda: _input(policy={"enforce_spec_defaults": True}), "GUEST_POLICY_DEBUG_SET"),
    (lambda: _input(policy={"expected_measurement_hex": "00" * 48}), "MEASUREMENT_MISMATCH"),
    (lambda: _roots(ask="genoa", ark="milan"), "ASK_INVALID"),  # a wrong intermediate
    (lambda: _roots(ask="genoa", ark="genoa"), "VCEK_CHAIN_INVALID"),
    (lambda: _input(expiration_check_date_unix=4_102_444_800), "VCEK_EXPIRED"),  # 2100
])
def test_mutated_evidence_is_rejected_at_the_step_that_refuses_it(document, code) -> None:
    verdict, output = _verdict(document())
    assert (verdict, output["rejection"]["code"]) == (REJECT, code)


def test_an_injected_root_is_the_only_one_trusted() -> None:
    ask, ark = _chain("milan")
    assert _verdict(_input(ask_pem=ask, amd_root_ca_pem=ark))[0] == ACCEPT
    assert _verdict(_roots(ask="genoa", ark="genoa"))[0] == REJECT


def test_bad_input_and_unknown_stages_have_their_own_exit_codes() -> None:
    assert run("verify-attestation-sev", "{not json")[0] == MALFORMED
    assert run("verify-attestation-sev", json.dumps({"schema_version": "2"}))[0] == MALFORMED
    assert _verdict({**_input(), "vcek_der_b64": "!!"})[0] == MALFORMED
    assert run("verify-attestation-v3", "{}")[0] == UNSUPPORTED


def test_the_command_line_is_the_adapter() -> None:
    done = subprocess.run([sys.executable, "-m", "cli", "conformance", "verify-attestation-sev"],
                          input=json.dumps(_input(_flipped(0x2A0))), capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == REJECT, done.stderr
    assert json.loads(done.stdout)["rejection"]["code"] == "REPORT_SIGNATURE_INVALID"
    caps = subprocess.run([sys.executable, "-m", "cli", "conformance", "capabilities"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "verify-attestation-sev" in json.loads(caps.stdout)["stages_supported"]
