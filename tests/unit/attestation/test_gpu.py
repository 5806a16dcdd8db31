"""The real H100 SPDM report verifies to the pinned NVIDIA root; a flipped bit does not."""

from __future__ import annotations

import datetime as dt

import pytest

from attestation.errors import Reason, VerificationError
from attestation.gpu import GpuReport, verify_gpu_report
from attestation.roots import PRODUCTION_NVIDIA_ROOTS
from tests.unit.attestation.conftest import flip_bit

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def gpu(vectors):
    raw = bytes.fromhex((vectors / "gpu/h100-report.hex").read_text().strip())
    return raw, (vectors / "gpu/h100-cert-chain.pem").read_bytes()


def _verify(raw, chain, nonce=None, roots=PRODUCTION_NVIDIA_ROOTS):
    nonce = raw[4:36] if nonce is None else nonce
    return verify_gpu_report(raw, chain, expected_nonce=nonce, trusted_roots=roots, now=NOW)


def test_real_h100_report_verifies(gpu) -> None:
    report = _verify(*gpu)
    assert len(report.measurements) == 64
    assert report.driver_version == "550.90.07"
    assert report.vbios_version == "96.00.9F.00.01"


@pytest.mark.parametrize(("offset", "what"), [(10, "request nonce"), (37 + 8 + 40, "measurement"),
                                              (-50, "signature"), (-200, "opaque data")])
def test_one_flipped_bit_fails(gpu, offset, what) -> None:
    raw, chain = gpu
    expected = raw[4:36]
    with pytest.raises(VerificationError) as err:
        _verify(flip_bit(raw, offset % len(raw)), chain, nonce=expected)
    assert err.value.reason is Reason.BAD_SIGNATURE, what


def test_another_nonce_is_refused(gpu) -> None:
    with pytest.raises(VerificationError) as err:
        _verify(*gpu, nonce=b"\x00" * 32)
    assert err.value.reason is Reason.NONCE_MISMATCH


def test_flipped_bit_in_the_device_chain_fails(gpu) -> None:
    raw, chain = gpu
    lines = chain.split(b"\n")
    lines[3] = lines[3][:10] + (b"A" if lines[3][10:11] != b"A" else b"B") + lines[3][11:]
    with pytest.raises(VerificationError) as err:
        _verify(raw, b"\n".join(lines))
    assert err.value.reason in (Reason.BAD_CHAIN, Reason.MALFORMED)


def test_unpinned_root_is_refused(gpu) -> None:
    with pytest.raises(VerificationError) as err:
        _verify(*gpu, roots=frozenset())
    assert err.value.reason is Reason.UNTRUSTED_ROOT


@pytest.mark.parametrize("cut", [0, 20, 37, 100, 3000])
def test_truncated_reports_are_malformed(gpu, cut) -> None:
    with pytest.raises(VerificationError) as err:
        GpuReport.parse(gpu[0][:cut])
    assert err.value.reason in (Reason.MALFORMED, Reason.UNSUPPORTED)
