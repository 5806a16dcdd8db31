"""`cloister conformance verify-attestation-tdx`: the TDX verifier (quote chain and
signatures, then Intel's collateral through `attestation.dcap`) driven as Tinfoil's
conformance suite drives it, over the real v4 quote of `test-vectors/tdx/` with its
collateral as Intel's PCS serves it, and mutated copies each rejected at the step that
must refuse it."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.conformance import ACCEPT, MALFORMED, REJECT, run
from attestation.tdx import TdxQuote

VECTORS = Path(__file__).resolve().parents[3] / "test-vectors"
IN_WINDOW = 1_751_328_000  # 2025-07-01: inside the collateral's window
AFTER_WINDOW = 1_754_006_400  # 2025-08-01


def _quote() -> bytes:
    return (VECTORS / "tdx" / "dcapqvl-quote-v4.bin").read_bytes()


def _input(quote: bytes | None = None, *, when: int = IN_WINDOW, **extra) -> dict:
    c = json.loads((VECTORS / "tdx" / "dcapqvl-quote-v4-collateral.json").read_text())
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return {"schema_version": "1", "quote_b64": b64(_quote() if quote is None else quote),
            "collateral": {
                # the PCS responses as served: the signed object and its signature
                "tcb_info_json": f'{{"tcbInfo":{c["tcb_info"]},'
                                 f'"signature":"{c["tcb_info_signature"]}"}}',
                "qe_identity_json": f'{{"enclaveIdentity":{c["qe_identity"]},'
                                    f'"signature":"{c["qe_identity_signature"]}"}}',
                "pck_crl_der_b64": b64(bytes.fromhex(c["pck_crl"])),
                "root_crl_der_b64": b64(bytes.fromhex(c["root_ca_crl"]))},
            "expiration_check_date_unix": when, **extra}


def _verdict(document: dict) -> tuple[int, dict]:
    return run("verify-attestation-tdx", json.dumps(document))


def _with_chain(raw: bytes, chain_pem: bytes) -> bytes:
    """The quote with another PCK chain in its certification data (the chain is not
    under the quote's signature; the lengths around it are rebuilt)."""
    quote = TdxQuote.parse(raw)
    signed = quote.signed_bytes
    (sig_len,) = struct.unpack_from("<I", raw, len(signed))
    sig = raw[len(signed) + 4:len(signed) + 4 + sig_len]
    cert = sig[134:]
    at = 384 + 64 + 2 + len(quote.qe_auth_data)
    cert = cert[:at] + struct.pack("<HI", 5, len(chain_pem)) + chain_pem
    sig = sig[:128] + struct.pack("<HI", 6, len(cert)) + cert
    return signed + struct.pack("<I", len(sig)) + sig


def _flipped(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:]


def test_the_real_v4_quote_is_accepted_with_its_facts() -> None:
    code, output = _verdict(_input())
    assert code == ACCEPT, output
    facts = output["outputs"]
    assert facts["qv_result"] == "OK" and facts["tcb_status"] == "UpToDate"
    assert facts["quote_version"] == 4 and facts["tee_type"] == "TDX"
    quote = TdxQuote.parse(_quote())
    assert facts["measurement"]["registers"][0] == quote.td.mr_td.hex()
    assert facts["body_fields"]["report_data_hex"] == quote.td.report_data.hex()


def _wrong_intermediate() -> bytes:
    raw = _quote()
    leaf, _, root = x509.load_pem_x509_certificates(TdxQuote.parse(raw).pck_chain_pem)
    signing = x509.load_pem_x509_certificates(
        (VECTORS.parent / "attestation" / "data" / "intel-tcb-signing-chain.pem").read_bytes())[0]
    return _with_chain(raw, b"".join(c.public_bytes(Encoding.PEM) for c in (leaf, signing, root)))


SIGNED = len(TdxQuote.parse(_quote()).signed_bytes)


@pytest.mark.parametrize(("document", "code"), [
    (_input(_flipped(_quote(), SIGNED + 4 + 10)), "QUOTE_SIGNATURE_INVALID"),  # signature
    (_input(_flipped(_quote(), 48 + 136)), "QUOTE_SIGNATURE_INVALID"),  # MRTD in the body
    (_input(_flipped(_quote(), SIGNED + 4 + 128 + 6 + 400)), "QE_REPORT_SIGNATURE_INVALID"),
    (_input(_flipped(_quote(), SIGNED + 4 + 128 + 6 + 330)), "QE_REPORT_SIGNATURE_INVALID"),
    (_input(_wrong_intermediate()), "PCK_CHAIN_INVALID"),
    (_input(_quote()[:700]), "QUOTE_TRUNCATED"),
    (_input(b"\x03" + _quote()[1:]), "QUOTE_FORMAT_UNSUPPORTED"),
    (_input(policy={"min_tee_tcb_svn_hex": "ff" * 16}), "TEE_TCB_SVN_BELOW_MINIMUM"),
    (_input(policy={"expected_mrtd_hex": "00" * 48}), "MRTD_MISMATCH"),
    (_input(policy={"expected_report_data_hex": "00" * 64}), "REPORT_DATA_MISMATCH"),
    (_input(policy={"accepted_qv_results": ["OUT_OF_DATE"]}),
     "QV_RESULT_NOT_ACCEPTED_BY_POLICY"),
], ids=["quote-signature", "body-byte", "qe-report-signature", "qe-report-data",
        "wrong-intermediate", "truncated", "version-3", "tee-tcb-svn-floor", "mrtd-pin",
        "report-data-pin", "qv-result-policy"])
def test_mutated_evidence_is_rejected_at_the_step_that_refuses_it(document, code) -> None:
    verdict, output = _verdict(document)
    assert (verdict, output.get("rejection")) == (REJECT, {"code": code}), output


def test_collateral_past_its_window_or_altered_is_rejected() -> None:
    verdict, output = _verdict(_input(when=AFTER_WINDOW))
    assert verdict == REJECT and output["rejection"]["code"] in (
        "TCB_INFO_EXPIRED", "PCK_CRL_EXPIRED", "ROOT_CRL_EXPIRED"), output
    altered = _input()
    tcb = altered["collateral"]["tcb_info_json"]
    altered["collateral"]["tcb_info_json"] = tcb.replace('"version":3', '"version":4', 1)
    verdict, output = _verdict(altered)
    assert verdict == REJECT and output["rejection"]["code"] == "QV_RESULT_TERMINAL_UNSPECIFIED"


def test_an_injected_root_is_the_only_one_trusted() -> None:
    other = (VECTORS / "snp" / "milan-ask-ark.pem").read_text()
    document = _input()
    document["collateral"]["intel_root_ca_pem"] = other
    assert _verdict(document)[1]["rejection"] == {"code": "ROOT_CA_UNTRUSTED"}


def test_input_that_does_not_parse_is_malformed() -> None:
    document = _input()
    del document["collateral"]["tcb_info_json"]
    assert _verdict(document)[0] == MALFORMED
    assert _verdict({**_input(), "quote_b64": "not base64!"})[0] == MALFORMED
