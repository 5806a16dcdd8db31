"""Attestation failures: one class, a stable reason code, a message safe to print.

A verifier never lets a parser exception escape: truncated, oversized or garbage input
becomes a `VerificationError` with a specific reason, never a trace and never
acceptance.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    MALFORMED = "malformed_evidence"
    UNSUPPORTED = "unsupported_format"
    BAD_SIGNATURE = "bad_signature"
    BAD_CHAIN = "untrusted_certificate_chain"
    UNTRUSTED_ROOT = "untrusted_root"
    CERT_EXPIRED = "certificate_not_valid_now"
    TCB_MISMATCH = "tcb_mismatch"
    CHIP_MISMATCH = "chip_id_mismatch"
    QE_MISMATCH = "qe_report_mismatch"
    NONCE_MISMATCH = "nonce_mismatch"
    BINDING_MISMATCH = "report_data_mismatch"
    POLICY = "policy_violation"
    EXPIRED = "evidence_expired"
    DEBUG = "debug_enabled"
    WORKLOAD_MISMATCH = "workload_manifest_mismatch"
    LAUNCH_MISMATCH = "launch_pin_mismatch"
    NOT_PINNED = "workload_not_pinned_at_launch"
    WORKLOAD_NOT_ALLOWED = "workload_not_allowed"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    PLATFORM_NOT_PINNED = "platform_not_pinned"
    MEASUREMENT = "measurement_not_accepted"
    VMPL = "vmpl_not_accepted"
    GUEST_POLICY = "guest_policy_not_accepted"
    TCB_TOO_LOW = "tcb_below_minimum"
    TD_ATTRIBUTES = "td_attributes_not_accepted"
    MRSEAM = "mrseam_not_accepted"
    TCB_STATUS = "tcb_status_not_accepted"
    GPU_MISSING = "gpu_evidence_missing"
    GPU_FIRMWARE = "gpu_firmware_not_accepted"
    NO_REFERENCE_VALUES = "no_reference_values"
    STATEMENT_SIGNATURE = "statement_signature_invalid"
    STATEMENT_UNTRUSTED = "statement_signed_by_untrusted_key"
    STATEMENT_EXPIRED = "statement_expired"
    STATEMENT_ROLLBACK = "statement_version_rollback"
    STATEMENT_EQUIVOCATION = "statement_equivocation"
    COLLATERAL_MISSING = "collateral_missing"
    COLLATERAL_INVALID = "collateral_invalid"
    COLLATERAL_STALE = "collateral_stale"
    REVOKED = "certificate_revoked"
    QE_IDENTITY = "qe_identity_mismatch"
    EXPIRY_TOO_LONG = "key_expiry_too_long"
    GPU_MODE = "gpu_mode_not_accepted"
    GPU_MEASUREMENT = "gpu_measurement_not_accepted"
    NONCE_SIGNATURE = "nonce_signature_invalid"
    POLICY_FLOOR = "below_policy_floor"
    FLEET_ANCHORS = "fleet_trust_anchors_differ"
    INIT_DATA_NOT_ALLOWED = "init_data_not_allowed"


class BelowPolicyFloor(ValueError):
    """Reference values that would weaken what Cloister always requires (no debugging,
    no migration agent, VMPL 0): no statement or policy file may say so."""


class VerificationError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.detail = message
