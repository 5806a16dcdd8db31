"""`cloister conformance STAGE`: Cloister's verifiers driven by a third-party conformance
suite. Read as an interface, the adapter contract of Tinfoil's public suite
(tinfoilsh/tinfoil-conformance): the stage is the argument, its input JSON on stdin, the
output JSON on stdout, and the exit code is the verdict (`ACCEPT`, `REJECT`,
`UNSUPPORTED`, `MALFORMED`). Sans-IO: `run(stage, text)` returns (exit code, output).

Stages: `verify-attestation-sev` (an SEV-SNP report, gzipped and base64 as the suite
gives it, with its VCEK; AMD's ASK and ARK either injected or the ones Cloister pins,
`attestation/data/amd-*-ask-ark.pem`), `verify-attestation-tdx` (a TDX v4 or v5 quote
with Intel's collateral as PCS serves it: TCB info and QE identity responses, both CRLs;
the issuer chains injected or Intel's TCB signing chain Cloister ships and the quote's own
PCK CA; the TCB evaluated by `attestation.dcap`), `verify-release-statement` (a DSSE
release statement, Cloister's own stage in the suite's shape: the trusted keys and the
time given, a workload it must list and a version floor optional), and `capabilities`.
A rejection names the step that refused, in the suite's codes, from which check failed
(never from an error's text).
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
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from attestation import dcap
from attestation.errors import Reason, VerificationError
from attestation.roots import PRODUCTION_AMD_ARKS, PRODUCTION_INTEL_ROOTS
from attestation.snp import POLICY_DEBUG_BIT, SnpReport, TcbVersion, check_vcek_matches
from attestation.statement import load_public_keys, verify_statement
from attestation.tdx import (
    HEADER_SIZE,
    TdxQuote,
    check_attestation_key_bound,
    check_qe_report,
    check_quote_signature,
)
from attestation.x509chain import (
    check_signed_by,
    check_valid_at,
    fingerprint,
    load_pem_chain,
    verify_chain,
    verify_ecdsa,
)

ACCEPT, REJECT, UNSUPPORTED, MALFORMED = 0, 10, 20, 30
SEV_STAGE = "verify-attestation-sev"
SEV_MEASUREMENT_TYPE = "https://tinfoil.sh/predicate/sev-snp-guest/v2"
TDX_STAGE = "verify-attestation-tdx"
RELEASE_STAGE = "verify-release-statement"
TDX_MEASUREMENT_TYPE = "https://tinfoil.sh/predicate/tdx-guest/v2"
POLICY_MIGRATE_MA_BIT = 1 << 18
AUTHOR_KEY_DIGEST = slice(0x110, 0x140)


class Malformed(ValueError):
    """The input itself did not parse."""


class Rejected(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def capabilities() -> dict[str, Any]:
    return {"adapter": "cloister", "stages_supported": [SEV_STAGE, TDX_STAGE, RELEASE_STAGE],
            "synthetic_roots": ["amd", "intel"], "freshness_enforced": False}


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


# --- Intel TDX ------------------------------------------------------------------------------

# TD_ATTRIBUTES bits a TD may have set (TUD.DEBUG, SEPT_VE_DISABLE, PKS, PERFMON) and the
# XFAM bits allowed and required, as the suite's schema states Intel's fixed values.
TD_ATTRIBUTES_ALLOWED = (1 << 0) | (1 << 28) | (1 << 30) | (1 << 63)
XFAM_ALLOWED, XFAM_REQUIRED = 0x0006DBE7, 0b11
# dcap-qvl's TCB status as the quote verification result Intel's library names.
QV_RESULTS = {"UpToDate": "OK", "SWHardeningNeeded": "SW_HARDENING_NEEDED",
              "ConfigurationNeeded": "CONFIG_NEEDED",
              "ConfigurationAndSWHardeningNeeded": "CONFIG_AND_SW_HARDENING_NEEDED",
              "OutOfDate": "OUT_OF_DATE",
              "OutOfDateConfigurationNeeded": "OUT_OF_DATE_CONFIG_NEEDED"}


def _inner_json(text: str, key: str) -> str:
    """The exact text of `key`'s object inside a PCS response (what Intel signed)."""
    at = text.index(f'"{key}"')
    start = text.index("{", at)
    _, end = json.JSONDecoder().raw_decode(text, start)
    return text[start:end]


def _pcs(text: Any, key: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise Malformed(f"the {key} response is required")
    signature = json.loads(text).get("signature")
    if not isinstance(signature, str):
        raise Malformed(f"the {key} response has no signature")
    return _inner_json(text, key), signature


def _tdx_collateral(document: dict[str, Any], pck_chain: list[x509.Certificate]
                    ) -> dict[str, str]:
    """The suite's collateral as `attestation.dcap` takes it; issuer chains not injected
    are Intel's TCB signing chain (shipped) and the quote's own PCK CA and root."""
    given = document.get("collateral")
    if not isinstance(given, dict):
        raise Malformed("collateral is required")
    tcb_info, tcb_signature = _pcs(given.get("tcb_info_json"), "tcbInfo")
    qe_identity, qe_signature = _pcs(given.get("qe_identity_json"), "enclaveIdentity")
    signing = resources.files("attestation").joinpath(
        "data", "intel-tcb-signing-chain.pem").read_text()
    pck_issuers = "".join(c.public_bytes(Encoding.PEM).decode() for c in pck_chain[1:])
    return {"tcb_info": tcb_info, "tcb_info_signature": tcb_signature,
            "tcb_info_issuer_chain": given.get("tcb_info_issuer_chain_pem") or signing,
            "qe_identity": qe_identity, "qe_identity_signature": qe_signature,
            "qe_identity_issuer_chain": given.get("qe_identity_issuer_chain_pem") or signing,
            "pck_crl": _b64(given, "pck_crl_der_b64").hex(),
            "root_ca_crl": _b64(given, "root_crl_der_b64").hex(),
            "pck_crl_issuer_chain": given.get("pck_crl_issuer_chain_pem") or pck_issuers}


def _tdx_revocation(collateral: dict[str, str], chain: list[x509.Certificate],
                    now: dt.datetime) -> None:
    leaf, ca, root = chain
    pck_crl = x509.load_der_x509_crl(bytes.fromhex(collateral["pck_crl"]))
    root_crl = x509.load_der_x509_crl(bytes.fromhex(collateral["root_ca_crl"]))
    for crl, issuer, name, stale in ((pck_crl, ca, "pck_crl", "PCK_CRL_EXPIRED"),
                                     (root_crl, root, "root_ca_crl", "ROOT_CRL_EXPIRED")):
        try:
            dcap.check_crl(crl, issuer, name, now)
        except VerificationError as exc:
            raise Rejected(stale if exc.reason == Reason.COLLATERAL_STALE
                           else "PCK_CHAIN_INVALID") from None
    if root_crl.get_revoked_certificate_by_serial_number(ca.serial_number) is not None:
        raise Rejected("INTERMEDIATE_REVOKED")
    if pck_crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
        raise Rejected("PCK_REVOKED")


def _tcb(raw: bytes, collateral: dict[str, str], root: x509.Certificate, now: dt.datetime,
         policy: dict[str, Any]) -> tuple[str, str]:
    try:
        verdict = dcap.tcb_verdict(raw, collateral, root, now)
    except VerificationError as exc:
        raise Rejected({Reason.COLLATERAL_STALE: "TCB_INFO_EXPIRED",
                        Reason.QE_IDENTITY: "QE_IDENTITY_FIELD_MISMATCH",
                        Reason.REVOKED: "TCB_REVOKED"}.get(
                            exc.reason, "QV_RESULT_TERMINAL_UNSPECIFIED")) from None
    result = QV_RESULTS.get(verdict.status)
    if result is None:
        raise Rejected("TCB_REVOKED" if verdict.status == "Revoked"
                       else "QV_RESULT_TERMINAL_UNSPECIFIED")
    if result not in (policy.get("accepted_qv_results") or ["OK"]):
        raise Rejected("QV_RESULT_NOT_ACCEPTED_BY_POLICY")
    return result, verdict.status


def _verify_tdx(document: dict[str, Any]) -> dict[str, Any]:
    raw = _b64(document, "quote_b64")
    when = document.get("expiration_check_date_unix")
    if not isinstance(when, int):
        raise Malformed("expiration_check_date_unix is required")
    now = dt.datetime.fromtimestamp(when, dt.UTC)
    policy = document.get("policy") or {}
    if not isinstance(policy, dict):
        raise Malformed("policy must be an object")
    injected = (document.get("collateral") or {}).get("intel_root_ca_pem")
    trusted = (frozenset({fingerprint(x509.load_pem_x509_certificate(injected.encode()))})
               if isinstance(injected, str) else PRODUCTION_INTEL_ROOTS)
    try:
        quote = TdxQuote.parse(raw)
    except VerificationError as exc:
        raise Rejected("QUOTE_TRUNCATED" if exc.reason == Reason.MALFORMED
                       else "QUOTE_FORMAT_UNSUPPORTED") from None
    try:
        chain = load_pem_chain(quote.pck_chain_pem)
    except VerificationError:
        raise Rejected("PCK_CHAIN_INCOMPLETE") from None
    if len(chain) != 3:
        raise Rejected("PCK_CHAIN_INCOMPLETE")
    if fingerprint(chain[-1]) not in trusted:
        raise Rejected("ROOT_CA_UNTRUSTED")
    try:
        verify_chain(chain, trusted_roots=trusted, now=now)
    except VerificationError as exc:
        raise Rejected("PCK_EXPIRED" if exc.reason == Reason.CERT_EXPIRED
                       else "PCK_CHAIN_INVALID") from None
    _step("QE_REPORT_SIGNATURE_INVALID", lambda: check_qe_report(quote, chain[0]))
    _step("AK_BINDING_INVALID", lambda: check_attestation_key_bound(quote))
    _step("QUOTE_SIGNATURE_INVALID", lambda: check_quote_signature(quote))
    qv_result, status = "OK", None
    if policy.get("tcb_evaluation_required", True):
        collateral = _tdx_collateral(document, chain)
        _tdx_revocation(collateral, chain, now)
        qv_result, status = _tcb(raw, collateral, chain[-1], now, policy)
    body = quote.signed_bytes[HEADER_SIZE + (6 if quote.version == 5 else 0):]
    _tdx_policy(quote, body, raw, policy)
    td = quote.td
    registers = [td.mr_td.hex(), *(r.hex() for r in td.rtmrs)]
    return {"measurement": {"type": TDX_MEASUREMENT_TYPE, "registers": registers},
            "qv_result": qv_result, **({"tcb_status": status} if status else {}),
            "collateral_expired": False, "quote_version": quote.version, "tee_type": "TDX",
            "body_fields": {
                "tee_tcb_svn_hex": td.tee_tcb_svn.hex(), "mrseam_hex": td.mr_seam.hex(),
                "mrsignerseam_hex": body[64:112].hex(), "seam_attributes_hex": body[112:120].hex(),
                "td_attributes_hex": td.td_attributes.hex(), "xfam_hex": td.xfam.hex(),
                "mrtd_hex": td.mr_td.hex(), "mrconfigid_hex": td.mr_config_id.hex(),
                "mrowner_hex": td.mr_owner.hex(), "mrownerconfig_hex": td.mr_owner_config.hex(),
                "rtmrs_hex": [r.hex() for r in td.rtmrs],
                "report_data_hex": td.report_data.hex()}}


def _tdx_policy(quote: TdxQuote, body: bytes, raw: bytes, policy: dict[str, Any]) -> None:
    td = quote.td
    pins = (("expected_td_attributes_hex", td.td_attributes, "TD_ATTRIBUTES_MISMATCH"),
            ("expected_xfam_hex", td.xfam, "XFAM_MISMATCH"),
            ("expected_mr_signer_seam_hex", body[64:112], "MR_SIGNER_SEAM_MISMATCH"),
            ("expected_seam_attributes_hex", body[112:120], "SEAM_ATTRIBUTES_MISMATCH"),
            ("expected_mrtd_hex", td.mr_td, "MRTD_MISMATCH"),
            ("expected_mr_config_id_hex", td.mr_config_id, "MR_CONFIG_ID_MISMATCH"),
            ("expected_mr_owner_hex", td.mr_owner, "MR_OWNER_MISMATCH"),
            ("expected_mr_owner_config_hex", td.mr_owner_config, "MR_OWNER_CONFIG_MISMATCH"),
            ("expected_rtmr3_hex", td.rtmrs[3], "RTMR3_NONZERO"),
            ("expected_report_data_hex", td.report_data, "REPORT_DATA_MISMATCH"),
            ("expected_qe_vendor_id_hex", raw[12:28], "QE_VENDOR_ID_MISMATCH"))
    for name, actual, code in pins:
        if name in policy and bytes.fromhex(str(policy[name])) != actual:
            raise Rejected(code)
    allowlist = policy.get("expected_mrseam_allowlist")
    if allowlist is not None and td.mr_seam.hex() not in [str(h).lower() for h in allowlist]:
        raise Rejected("MR_SEAM_NOT_ALLOWED")
    floor = policy.get("min_tee_tcb_svn_hex")
    if floor is not None and any(a < b for a, b in zip(td.tee_tcb_svn, bytes.fromhex(floor),
                                                       strict=True)):
        raise Rejected("TEE_TCB_SVN_BELOW_MINIMUM")
    if policy.get("enforce_spec_defaults"):
        attributes = int.from_bytes(td.td_attributes, "little")
        xfam = int.from_bytes(td.xfam, "little")
        if td.debug:
            raise Rejected("TD_ATTRIBUTES_DEBUG_SET")
        if attributes & ~TD_ATTRIBUTES_ALLOWED:
            raise Rejected("TD_ATTRIBUTES_RESERVED_BIT_SET")
        if xfam & XFAM_REQUIRED != XFAM_REQUIRED:
            raise Rejected("XFAM_REQUIRED_BIT_CLEAR")
        if xfam & ~XFAM_ALLOWED:
            raise Rejected("XFAM_FORBIDDEN_BIT_SET")

# --- release statements ---------------------------------------------------------------------

def _verify_release_statement(document: dict[str, Any]) -> dict[str, Any]:
    """A DSSE release statement (`attestation.statement`) against the trusted keys given,
    at the time given; optionally a workload it must list and a version floor."""
    envelope = _b64(document, "envelope_b64")
    keys = document.get("trusted_keys_pem")
    when = document.get("verification_time_unix")
    if not isinstance(keys, str) or not isinstance(when, int):
        raise Malformed("trusted_keys_pem and verification_time_unix are required")
    trusted = load_public_keys(keys.encode())
    if not trusted:
        raise Malformed("trusted_keys_pem holds no public key")
    outer = json.loads(envelope)
    if not isinstance(outer, dict) or not {"payload", "payloadType", "signatures"} <= set(outer):
        raise Malformed("not a DSSE envelope")
    try:
        verified = verify_statement(envelope, trusted,
                                    now=dt.datetime.fromtimestamp(when, dt.UTC))
    except VerificationError as exc:
        raise Rejected(_STATEMENT_CODES.get(exc.reason, "STATEMENT_INVALID")) from None
    values = verified.values
    expected = document.get("expected_workload_digest_hex")
    if expected is not None and str(expected).lower() not in values.workloads:
        raise Rejected("WORKLOAD_NOT_LISTED")
    floor = document.get("min_version")
    if floor is not None and values.version < int(floor):
        raise Rejected("VERSION_ROLLBACK")
    assert values.valid_until is not None
    return {"version": values.version, "valid_until": values.valid_until.isoformat(),
            "key_id": verified.key_id, "statement_digest": verified.digest,
            "workload_digests": sorted(values.workloads)}


_STATEMENT_CODES = {Reason.STATEMENT_UNTRUSTED: "KEY_UNTRUSTED",
                    Reason.STATEMENT_SIGNATURE: "SIGNATURE_INVALID",
                    Reason.STATEMENT_EXPIRED: "STATEMENT_EXPIRED",
                    Reason.UNSUPPORTED: "PAYLOAD_TYPE_UNSUPPORTED",
                    Reason.POLICY_FLOOR: "BELOW_POLICY_FLOOR"}


_STAGES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    SEV_STAGE: _verify_sev, TDX_STAGE: _verify_tdx,
    RELEASE_STAGE: _verify_release_statement}
