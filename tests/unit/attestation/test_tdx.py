"""Real TDX quotes (v4 and v5) verify to the pinned Intel root; a flipped bit does not."""

from __future__ import annotations

import datetime as dt

import pytest

from attestation.errors import Reason, VerificationError
from attestation.roots import PRODUCTION_INTEL_ROOTS
from attestation.tdx import TdxQuote, verify_tdx_quote
from tests.unit.attestation.conftest import flip_bit

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)  # every PCK leaf of the vectors is valid
REPORT_DATA_V4 = 48 + 520  # absolute offset 0x238


def _verify(raw: bytes, roots=PRODUCTION_INTEL_ROOTS):
    return verify_tdx_quote(raw, trusted_roots=roots, now=NOW)


@pytest.mark.parametrize("name", ["quote-v4-spr.bin", "quote-v5.bin", "dcapqvl-quote-v4.bin"])
def test_real_quotes_verify(vectors, name) -> None:
    quote = _verify((vectors / "tdx" / name).read_bytes())
    assert quote.version in (4, 5)
    assert len(quote.td.mr_td) == 48 and len(quote.td.report_data) == 64


def test_v5_quote_reports_its_version(vectors) -> None:
    assert TdxQuote.parse((vectors / "tdx/quote-v5.bin").read_bytes()).version == 5


@pytest.mark.parametrize(("offset", "what"), [
    (REPORT_DATA_V4, "report_data"), (48 + 136, "MRTD"), (48 + 328, "RTMR0"),
    (48 + 584 + 4 + 10, "quote signature"), (48 + 584 + 4 + 70, "attestation key"),
    (48 + 584 + 4 + 134 + 330, "QE report_data"),
])
def test_one_flipped_bit_fails(vectors, offset, what) -> None:
    raw = (vectors / "tdx/quote-v4-spr.bin").read_bytes()
    with pytest.raises(VerificationError) as err:
        _verify(flip_bit(raw, offset))
    assert err.value.reason in (Reason.BAD_SIGNATURE, Reason.QE_MISMATCH, Reason.MALFORMED), what


def test_flipped_bit_in_the_pck_chain_fails(vectors) -> None:
    raw = (vectors / "tdx/quote-v4-spr.bin").read_bytes()
    start = raw.index(b"-----BEGIN CERTIFICATE-----") + 200  # inside the PCK leaf
    with pytest.raises(VerificationError) as err:
        _verify(flip_bit(raw, start, 1))
    assert err.value.reason in (Reason.BAD_CHAIN, Reason.MALFORMED)


def test_unpinned_root_is_refused(vectors) -> None:
    with pytest.raises(VerificationError) as err:
        _verify((vectors / "tdx/quote-v4-spr.bin").read_bytes(), roots=frozenset())
    assert err.value.reason is Reason.UNTRUSTED_ROOT


@pytest.mark.parametrize("cut", [0, 10, 48, 600, 700, 1000])
def test_truncated_quotes_are_malformed(vectors, cut) -> None:
    raw = (vectors / "tdx/quote-v4-spr.bin").read_bytes()
    with pytest.raises(VerificationError) as err:
        _verify(raw[:cut])
    assert err.value.reason in (Reason.MALFORMED, Reason.UNSUPPORTED)


def test_oversized_and_wrong_version_quotes(vectors) -> None:
    raw = (vectors / "tdx/quote-v4-spr.bin").read_bytes()
    with pytest.raises(VerificationError) as err:
        _verify(raw + b"\x00" * 70_000)
    assert err.value.reason is Reason.MALFORMED
    with pytest.raises(VerificationError) as err:
        _verify(b"\x03" + raw[1:])
    assert err.value.reason is Reason.UNSUPPORTED

