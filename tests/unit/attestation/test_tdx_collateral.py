"""Intel collateral for a real TDX quote: the known-good case verifies inside its window,
and removing or corrupting any part of it changes the verdict."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from attestation import dcap
from attestation.collateral import TDX_FIELDS
from attestation.errors import Reason, VerificationError
from attestation.tdx import TdxQuote
from attestation.x509chain import load_pem_chain

# Inside the vector's collateral window (TCB info 2025-06-19 .. 2025-07-19).
WINDOW = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def real(vectors) -> tuple[bytes, dict[str, str]]:
    raw = (vectors / "tdx/dcapqvl-quote-v4.bin").read_bytes()
    collateral = json.loads((vectors / "tdx/dcapqvl-quote-v4-collateral.json").read_text())
    return raw, collateral


def _evaluate(raw: bytes, collateral: dict[str, str], now: dt.datetime = WINDOW
              ) -> dcap.TcbVerdict:
    chain = load_pem_chain(TdxQuote.parse(raw).pck_chain_pem)
    return dcap.evaluate(raw, collateral, pck_chain=chain, now=now)


def test_the_real_quote_is_up_to_date_inside_its_collateral_window(real) -> None:
    verdict = _evaluate(*real)
    assert verdict.status == "UpToDate"
    assert verdict.qe_status == "UpToDate"
    assert verdict.advisory_ids == ()


@pytest.mark.parametrize("when", [dt.datetime(2025, 8, 1, tzinfo=dt.UTC),
                                  dt.datetime(2025, 5, 1, tzinfo=dt.UTC)])
def test_outside_the_window_the_collateral_is_stale(real, when) -> None:
    with pytest.raises(VerificationError) as err:
        _evaluate(*real, now=when)
    assert err.value.reason is Reason.COLLATERAL_STALE


def _corrupt(value: str) -> str:
    """One character changed in the middle of the part (hex, JSON or PEM)."""
    if value.startswith("-----BEGIN"):
        body = value.index("\n", 40) + 20  # inside the first certificate's base64
        return value[:body] + ("A" if value[body] != "A" else "B") + value[body + 1:]
    middle = len(value) // 2
    while not value[middle].isdigit():
        middle += 1
    return value[:middle] + ("1" if value[middle] != "1" else "2") + value[middle + 1:]


@pytest.mark.parametrize("part", TDX_FIELDS)
@pytest.mark.parametrize("damage", ["removed", "corrupted"])
def test_every_collateral_part_matters(real, part, damage) -> None:
    raw, collateral = real
    changed = dict(collateral)
    if damage == "removed":
        del changed[part]
    else:
        changed[part] = _corrupt(collateral[part])
    with pytest.raises(VerificationError) as err:
        _evaluate(raw, changed)
    assert err.value.reason in (Reason.COLLATERAL_INVALID, Reason.COLLATERAL_STALE,
                                Reason.QE_IDENTITY)


def test_collateral_for_another_pck_ca_is_refused(real) -> None:
    raw, collateral = real
    swapped = dict(collateral, pck_crl_issuer_chain=collateral["tcb_info_issuer_chain"])
    with pytest.raises(VerificationError) as err:
        _evaluate(raw, swapped)
    assert err.value.reason is Reason.COLLATERAL_INVALID
