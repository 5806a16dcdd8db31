"""A release statement cannot weaken Cloister's policy floor (issue 27): whoever holds a
release key can choose measurements, not a debuggable guest, a migration agent, a report
from a lower-privileged VMPL, or a debuggable TD. Each attack signs lax values with a key
the client trusts; each is refused with the floor's reason, and the checks hold the floor
even for values built in code."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from attestation.errors import Reason, VerificationError
from attestation.platforms.snp import POLICY_BITS, SnpValues, check_snp
from attestation.platforms.tdx import TdxValues
from attestation.simulated import release as simulated_release
from attestation.statement import generate_key, key_id, sign_statement, verify_statement
from tests.unit.attestation.test_snp import _verify

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)


def _lax(**platforms) -> bytes:
    values = simulated_release.reference_values("ab" * 32, version=1, now=NOW)
    merged = {**values.platforms, **platforms}
    return sign_statement(dataclasses.replace(values, platforms=merged), KEY)


KEY = generate_key()
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}
SNP_MEASURED = frozenset({"00" * 48})


@pytest.mark.parametrize("lax", [
    {"simulated-sev-snp": SnpValues(SNP_MEASURED, forbidden_policy_bits=())},
    {"simulated-sev-snp": SnpValues(SNP_MEASURED, forbidden_policy_bits=("debug",))},
    {"sev-snp": SnpValues(SNP_MEASURED, forbidden_policy_bits=("migrate_ma",))},
    {"sev-snp": SnpValues(SNP_MEASURED, vmpl=2)},
    {"tdx": TdxValues(frozenset({"00" * 48}), forbidden_attributes=())},
], ids=["no-bits", "migration-agent", "debug", "vmpl-2", "tdx-debug"])
def test_a_signed_statement_below_the_floor_is_refused(lax) -> None:
    with pytest.raises(VerificationError) as err:
        verify_statement(_lax(**lax), TRUSTED, now=NOW)
    assert err.value.reason is Reason.POLICY_FLOOR


def test_values_built_in_code_cannot_let_a_debug_guest_through(snp) -> None:
    report = _verify(*snp)  # the real Milan vector: its guest policy allows debugging
    lax = SnpValues(frozenset({report.measurement.hex()}), forbidden_policy_bits=())
    with pytest.raises(VerificationError) as err:
        check_snp(report, lax)
    assert err.value.reason is Reason.DEBUG
    migratable = dataclasses.replace(
        report, policy=(report.policy & ~(1 << POLICY_BITS["debug"]))
        | 1 << POLICY_BITS["migrate_ma"])
    with pytest.raises(VerificationError) as err:
        check_snp(migratable, lax)
    assert err.value.reason is Reason.GUEST_POLICY
    with pytest.raises(VerificationError) as err:
        check_snp(dataclasses.replace(migratable, policy=report.policy & ~(
            1 << POLICY_BITS["debug"]), vmpl=1), dataclasses.replace(lax, vmpl=1))
    assert err.value.reason is Reason.VMPL
