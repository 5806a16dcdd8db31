"""The real Milan SNP report verifies; one flipped bit anywhere that matters does not."""

from __future__ import annotations

import datetime as dt
import warnings

import pytest
from cryptography import x509

from attestation.errors import Reason, VerificationError
from attestation.roots import PRODUCTION_AMD_ARKS
from attestation.snp import SnpReport, verify_snp_report
from tests.unit.attestation.conftest import flip_bit

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _verify(raw, vcek, ask, ark, roots=PRODUCTION_AMD_ARKS):
    return verify_snp_report(raw, vcek=vcek, ask=ask, ark=ark, trusted_arks=roots, now=NOW)


def test_real_milan_report_verifies(snp) -> None:
    report = _verify(*snp)
    assert report.version == 2
    assert report.report_data[:5] == bytes([1, 2, 3, 4, 5])
    assert report.measurement.hex().startswith("b07af962")
    assert report.debug_allowed  # the vector's policy sets DEBUG: policy checks see it
    assert (report.reported_tcb.boot_loader, report.reported_tcb.snp,
            report.reported_tcb.microcode) == (2, 5, 0x44)


@pytest.mark.parametrize(("offset", "what"), [(0x50, "report_data"), (0x90, "measurement"),
                                              (0x2A0, "signature r"), (0x2E8, "signature s"),
                                              (0x1A0, "chip_id")])
def test_one_flipped_bit_fails(snp, offset, what) -> None:
    raw, vcek, ask, ark = snp
    with pytest.raises(VerificationError) as err:
        _verify(flip_bit(raw, offset), vcek, ask, ark)
    assert err.value.reason in (Reason.BAD_SIGNATURE, Reason.CHIP_MISMATCH), what


def test_flipped_bit_in_the_vcek_fails(snp) -> None:
    raw, vcek, ask, ark = snp
    from cryptography.hazmat.primitives.serialization import Encoding

    der = vcek.public_bytes(Encoding.DER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = x509.load_der_x509_certificate(flip_bit(der, len(der) - 40))
    with pytest.raises(VerificationError) as err:
        _verify(raw, bad, ask, ark)
    assert err.value.reason is Reason.BAD_CHAIN


def test_unpinned_root_is_refused(snp) -> None:
    with pytest.raises(VerificationError) as err:
        _verify(*snp, roots=frozenset({"00" * 32}))
    assert err.value.reason is Reason.UNTRUSTED_ROOT


def test_genoa_chain_does_not_vouch_for_a_milan_vcek(snp, vectors) -> None:
    raw, vcek, _, _ = snp
    ask, ark = x509.load_pem_x509_certificates((vectors / "snp/genoa-ask-ark.pem").read_bytes())
    with pytest.raises(VerificationError) as err:
        _verify(raw, vcek, ask, ark)
    assert err.value.reason is Reason.BAD_CHAIN


@pytest.mark.parametrize("raw", [b"", b"\x00" * 100, b"\x00" * 1185])
def test_truncated_or_oversized_reports_are_malformed(raw) -> None:
    with pytest.raises(VerificationError) as err:
        SnpReport.parse(raw)
    assert err.value.reason is Reason.MALFORMED


def test_unknown_version_and_signature_algorithm_are_unsupported(snp) -> None:
    raw = snp[0]
    with pytest.raises(VerificationError) as err:
        SnpReport.parse(b"\x09" + raw[1:])
    assert err.value.reason is Reason.UNSUPPORTED
    with pytest.raises(VerificationError) as err:
        SnpReport.parse(raw[:0x34] + b"\x07" + raw[0x35:])
    assert err.value.reason is Reason.UNSUPPORTED


def test_default_values_reject_the_debug_vector_and_check_the_rest(snp) -> None:
    import dataclasses

    from attestation.platforms.snp import POLICY_BITS, SnpValues, check_snp

    report = _verify(*snp)
    measurement = frozenset({report.measurement.hex()})
    with pytest.raises(VerificationError) as err:
        check_snp(report, SnpValues(measurement))
    assert err.value.reason is Reason.DEBUG
    # no values can relax debugging (test_policy_floor.py): the rest is checked on the
    # same report with the bit cleared
    report = dataclasses.replace(report, policy=report.policy & ~(1 << POLICY_BITS["debug"]))
    check_snp(report, SnpValues(measurement))
    with pytest.raises(VerificationError) as err:
        check_snp(report, SnpValues(measurement, min_tcb=type(
            report.reported_tcb)(boot_loader=2, tee=0, snp=9, microcode=0)))
    assert err.value.reason is Reason.TCB_TOO_LOW
    with pytest.raises(VerificationError) as err:
        check_snp(report, SnpValues(frozenset({"00" * 48})))
    assert err.value.reason is Reason.MEASUREMENT


def test_the_built_in_tcb_floor_holds_under_any_reference_values(snp) -> None:
    """A release cannot set its minimum below the floor: an older TCB is refused even
    when the values ask for no minimum at all."""
    import dataclasses

    from attestation.platforms.snp import POLICY_BITS, SNP_TCB_FLOOR, SnpValues, check_snp
    from attestation.snp import TcbVersion

    report = _verify(*snp)
    report = dataclasses.replace(report, policy=report.policy & ~(1 << POLICY_BITS["debug"]))
    values = SnpValues(frozenset({report.measurement.hex()}))
    check_snp(report, values)  # the real report sits exactly on the floor
    older = dataclasses.replace(report, reported_tcb=TcbVersion(
        boot_loader=SNP_TCB_FLOOR.boot_loader, tee=0, snp=SNP_TCB_FLOOR.snp - 1,
        microcode=SNP_TCB_FLOOR.microcode))
    with pytest.raises(VerificationError) as err:
        check_snp(older, values)
    assert err.value.reason is Reason.TCB_TOO_LOW


def test_amd_crl_checks_against_the_real_milan_ark(snp) -> None:
    """No CRL AMD signed is in the vectors: one signed by another key is refused as
    invalid, never taken as 'nothing revoked'; the family comes from the ARK."""
    from attestation import amd_crl
    from attestation.simulated import SimulatedPki

    raw, vcek, ask, ark = snp
    assert amd_crl.family(ark) == "Milan"
    forged = SimulatedPki.generate().amd_crl(now=NOW)
    with pytest.raises(VerificationError) as err:
        amd_crl.check_not_revoked(forged, ark=ark, ask=ask, vcek=vcek, now=NOW)
    assert err.value.reason is Reason.COLLATERAL_INVALID
    with pytest.raises(VerificationError) as err:
        amd_crl.check_not_revoked(b"\x30\x03garbage", ark=ark, ask=ask, vcek=vcek, now=NOW)
    assert err.value.reason is Reason.COLLATERAL_INVALID
