"""`cloister conformance STAGE`: Cloister's verifiers driven by a third-party conformance
suite. Read as an interface, the adapter contract of Tinfoil's public suite
(tinfoilsh/tinfoil-conformance): the stage is the argument, its input JSON on stdin, the
output JSON on stdout, and the exit code is the verdict (`ACCEPT`, `REJECT`,
`UNSUPPORTED`, `MALFORMED`). Sans-IO: `run(stage, text)` returns (exit code, output).

Stages: `verify-attestation-sev` (an SEV-SNP report, gzipped and base64 as the suite
gives it, with its VCEK; AMD's ASK and ARK either injected or the ones Cloister pins,
`attestation/data/amd-*-ask-ark.pem`), and `capabilities`. A rejection names the step
that refused, in the suite's codes, from which check failed (never from an error's
text).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import gzip
import json
import warnings
from collections.abc import Callable
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.utils import CryptographyDeprecationWarning

from attestation.errors import Reason, VerificationError
from attestation.roots import PRODUCTION_AMD_ARKS
from attestation.snp import POLICY_DEBUG_BIT, SnpReport, TcbVersion, check_vcek_matches
from attestation.x509chain import check_signed_by, check_valid_at, fingerprint, verify_ecdsa

ACCEPT, REJECT, UNSUPPORTED, MALFORMED = 0, 10, 20, 30
SEV_STAGE = "verify-attestation-sev"
SEV_MEASUREMENT_TYPE = "https://tinfoil.sh/predicate/sev-snp-guest/v2"
POLICY_MIGRATE_MA_BIT = 1 << 18
AUTHOR_KEY_DIGEST = slice(0x110, 0x140)


class Malformed(ValueError):
    """The input itself did not parse."""


class Rejected(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def capabilities() -> dict[str, Any]:
    return {"adapter": "cloister", "stages_supported": [SEV_STAGE],
            "synthetic_roots": ["amd"], "freshness_enforced": False}


def run(stage: str, text: str) -> tuple[int, dict[str, Any]]:
    """The verdict and the output for one stage's input."""
    if stage == "capabilities":
        return ACCEPT, capabilities()
    verifier = _STAGES.get(stage)
    if verifier is None:
        return UNSUPPORTED, {"stage": stage, "accepted": False,
                             "error": "stage not supported by this adapter"}
    try:
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("schema_version") != "1":
            raise Malformed("schema_version must be \"1\"")
        outputs = verifier(document)
    except (Malformed, ValueError, TypeError, binascii.Error, OSError, EOFError) as exc:
        return MALFORMED, {"stage": stage, "accepted": False,
                           "rejection": {"code": "MALFORMED_INPUT"},
                           "error": type(exc).__name__}
    except Rejected as refused:
        return REJECT, {"stage": stage, "accepted": False,
                        "rejection": {"code": refused.code}}
    return ACCEPT, {"stage": stage, "accepted": True, "outputs": outputs}


# --- SEV-SNP --------------------------------------------------------------------------------

def _b64(document: dict[str, Any], name: str) -> bytes:
    value = document.get(name)
    if not isinstance(value, str):
        raise Malformed(f"{name} is required")
    return base64.b64decode(value, validate=True)


def _load_vcek(der: bytes) -> x509.Certificate:
    """AMD's key distribution service issues VCEKs with serial number 0, which
    `cryptography` warns about (RFC 5280 wants it positive); the chain check decides."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(der)


def _pinned_chain(vcek: x509.Certificate) -> tuple[x509.Certificate, x509.Certificate]:
    """The ASK and ARK Cloister pins for the VCEK's product (Milan or Genoa)."""
    issuer = vcek.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    product = str(issuer[0].value).removeprefix("SEV-").lower() if issuer else ""
    name = f"amd-{product}-ask-ark.pem"
    try:
        pem = resources.files("attestation").joinpath("data", name).read_bytes()
    except (FileNotFoundError, OSError):
        raise Rejected("VCEK_CHAIN_INVALID") from None
    ask, ark = x509.load_pem_x509_certificates(pem)
    return ask, ark


def _step(code: str, check: Callable[[], object]) -> None:
    try:
        check()
    except VerificationError:
        raise Rejected(code) from None


def _verify_sev(document: dict[str, Any]) -> dict[str, Any]:
    raw = _b64(document, "attestation_doc_b64")
    if raw[:2] == b"\x1f\x8b":  # gzipped, as the suite gives it (else the report as is)
        raw = gzip.decompress(raw)
    vcek = _load_vcek(_b64(document, "vcek_der_b64"))
    when = document.get("expiration_check_date_unix") or 0
    now = (dt.datetime.fromtimestamp(when, dt.UTC) if when else dt.datetime.now(dt.UTC))
    injected = document.get("amd_root_ca_pem"), document.get("ask_pem")
    if any(injected) and not all(injected):
        raise Malformed("amd_root_ca_pem and ask_pem go together")
    if all(injected):
        ark = x509.load_pem_x509_certificate(str(injected[0]).encode())
        ask = x509.load_pem_x509_certificate(str(injected[1]).encode())
        trusted = frozenset({fingerprint(ark)})
    else:
        ask, ark = _pinned_chain(vcek)
        trusted = PRODUCTION_AMD_ARKS
    try:
        report = SnpReport.parse(raw)
    except VerificationError as exc:
        raise Rejected("REPORT_TRUNCATED" if exc.reason == Reason.MALFORMED
                       else "WRONG_REPORT_VERSION") from None
    if fingerprint(ark) not in trusted:
        raise Rejected("ARK_UNTRUSTED")
    _step("ARK_UNTRUSTED", lambda: check_signed_by(ark, ark))
    _step("ASK_INVALID", lambda: check_signed_by(ask, ark))
    _step("VCEK_CHAIN_INVALID", lambda: check_signed_by(vcek, ask))
    _step("VCEK_EXPIRED", lambda: check_valid_at(vcek, now))
    _step("ASK_INVALID", lambda: check_valid_at(ask, now))
    _step("REPORT_SIGNATURE_INVALID", lambda: verify_ecdsa(
        vcek.public_key(), report.signature_r, report.signature_s, report.signed_bytes,
        hashes.SHA384(), what="SNP report signature"))
    try:
        check_vcek_matches(report, vcek)
    except VerificationError as exc:
        raise Rejected("VCEK_HWID_MISMATCH" if exc.reason == Reason.CHIP_MISMATCH
                       else "VCEK_TCB_MISMATCH") from None
    _sev_policy(report, raw, document.get("policy") or {})
    return {"measurement": {"type": SEV_MEASUREMENT_TYPE,
                            "registers": [report.measurement.hex()]},
            "body_fields": _body_fields(report, raw)}


def _sev_policy(report: SnpReport, raw: bytes, policy: dict[str, Any]) -> None:
    if not isinstance(policy, dict):
        raise Malformed("policy must be an object")
    pins = (("expected_measurement_hex", report.measurement, "MEASUREMENT_MISMATCH"),
            ("expected_host_data_hex", report.host_data, "HOST_DATA_MISMATCH"),
            ("expected_report_data_hex", report.report_data, "REPORT_DATA_MISMATCH"),
            ("expected_id_key_digest_hex", report.id_key_digest, "ID_KEY_DIGEST_MISMATCH"),
            ("expected_author_key_digest_hex", raw[AUTHOR_KEY_DIGEST],
             "AUTHOR_KEY_DIGEST_MISMATCH"))
    for name, actual, code in pins:
        if name in policy and bytes.fromhex(str(policy[name])) != actual:
            raise Rejected(code)
    floor = TcbVersion(int(policy.get("min_tcb_bl_spl", 0)),
                       int(policy.get("min_tcb_tee_spl", 0)),
                       int(policy.get("min_tcb_snp_spl", 0)),
                       int(policy.get("min_tcb_ucode_spl", 0)))
    if not report.reported_tcb.at_least(floor):
        raise Rejected("TCB_OUT_OF_DATE")
    if policy.get("enforce_spec_defaults"):
        if report.policy & POLICY_DEBUG_BIT:
            raise Rejected("GUEST_POLICY_DEBUG_SET")
        if report.policy & POLICY_MIGRATE_MA_BIT:
            raise Rejected("GUEST_POLICY_MIGRATE_MA_SET")


def _body_fields(report: SnpReport, raw: bytes) -> dict[str, Any]:
    return {"version": report.version, "guest_svn": report.guest_svn,
            "policy_hex": report.policy.to_bytes(8, "little").hex(),
            "policy_decoded": {"abi_minor": report.policy & 0xFF,
                               "abi_major": (report.policy >> 8) & 0xFF,
                               "debug": bool(report.policy & POLICY_DEBUG_BIT),
                               "migrate_ma": bool(report.policy & POLICY_MIGRATE_MA_BIT)},
            "vmpl": report.vmpl, "signature_algo": report.signature_algo,
            "report_data_hex": report.report_data.hex(),
            "measurement_hex": report.measurement.hex(),
            "host_data_hex": report.host_data.hex(),
            "id_key_digest_hex": report.id_key_digest.hex(),
            "author_key_digest_hex": raw[AUTHOR_KEY_DIGEST].hex(),
            "report_id_hex": report.report_id.hex(),
            "reported_tcb_hex": raw[0x180:0x188].hex(),
            "chip_id_hex": report.chip_id.hex()}


_STAGES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {SEV_STAGE: _verify_sev}
