"""The gateway fetches its platform's collateral from the vendors (here a simulated PCS
and KDS over real HTTP), caches it until its next update, and refuses to serve evidence
it cannot back with current collateral."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from attestation.errors import VerificationError
from attestation.evidence import collect
from attestation.providers import ProviderError
from attestation.simulated import SimulatedPki
from attestation.simulated.twins import SimulatedGpuProvider
from attestation.verify import TrustRoots, verify_evidence
from gateway.collateral_fetch import REFRESH_MARGIN, FetchedCollateral
from testkit.attested import TEST_WORKLOAD, policy, simulated
from tests.vendor_services import SimulatedVendorServices

NONCE = b"f" * 32


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimulatedPki:
    return SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


def _evidence(pki, *, tdx: bool = False):
    return simulated(pki, tdx=tdx).cpu.get_report(b"\x00" * 64)


def _fetcher(folder, vendors, clock=None) -> FetchedCollateral:
    kwargs = {"clock": clock} if clock else {}
    return FetchedCollateral(folder, services={"intel": vendors.url, "amd": vendors.url,
                                               "nvidia": f"{vendors.url}/ocsp"}, **kwargs)


@pytest.mark.parametrize("tdx", [False, True])
def test_fetched_collateral_makes_evidence_clients_accept(pki, tmp_path, tdx) -> None:
    with SimulatedVendorServices(pki).running() as vendors:
        attested = simulated(pki, tdx=tdx)
        now = int(time.time())
        document = collect(attested.cpu, SimulatedGpuProvider(pki), keys={"ohttp": b"k"},
                           workload=TEST_WORKLOAD, nonce=NONCE, expires_at=now + 3600, now=now,
                           collateral=_fetcher(tmp_path, vendors)).to_json()
    claims = verify_evidence(document, expected_nonce=NONCE,
                             roots=TrustRoots().with_simulated(pki.roots_pem()),
                             policy=policy(), now=dt.datetime.now(dt.UTC))
    assert claims.platform == ("simulated-tdx" if tdx else "simulated-sev-snp")
    if tdx:
        assert claims.tcb_status == "UpToDate"
        assert set(vendors.requests) == {
            "/sgx/certification/v4/pckcrl", "/tdx/certification/v4/tcb",
            "/tdx/certification/v4/qe/identity", "/sgx/certification/v4/rootcacrl",
            "/ocsp"}
    else:
        assert vendors.requests == {"/vcek/v1/Simulated/crl": 1, "/ocsp": 1}


def test_collateral_is_cached_until_its_next_update(pki, tmp_path) -> None:
    now = [dt.datetime.now(dt.UTC)]
    with SimulatedVendorServices(pki, days=7).running() as vendors:
        fetcher = _fetcher(tmp_path, vendors, clock=lambda: now[0])
        first = fetcher.for_report(_evidence(pki))
        assert fetcher.for_report(_evidence(pki)) is first
        restarted = _fetcher(tmp_path, vendors, clock=lambda: now[0])  # from the disk cache
        assert restarted.for_report(_evidence(pki)).amd_crl == first.amd_crl
        assert vendors.requests["/vcek/v1/Simulated/crl"] == 1
        until = first.next_update()
        assert until is not None
        now[0] = until - REFRESH_MARGIN + dt.timedelta(seconds=1)
        vendors.collateral_options["now"] = now[0]  # AMD has issued the next one by then
        renewed = fetcher.for_report(_evidence(pki))
        assert renewed.amd_crl != first.amd_crl
        assert vendors.requests["/vcek/v1/Simulated/crl"] == 2


def test_no_current_collateral_means_no_report(pki, tmp_path) -> None:
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    with (SimulatedVendorServices(pki, now=stale, days=7).running() as vendors,
          pytest.raises(ProviderError, match="not current")):
        _fetcher(tmp_path, vendors).for_report(_evidence(pki))
    with SimulatedVendorServices(pki).running() as gone:
        url = gone.url
    with pytest.raises(ProviderError, match="cannot fetch"):
        FetchedCollateral(tmp_path / "other", services={"intel": url, "amd": url}).for_report(
            _evidence(pki, tdx=True))


def test_the_last_good_copy_is_served_while_the_vendor_is_away_and_renewed_in_the_background(
        pki, tmp_path) -> None:
    attested = simulated(pki)

    def document(collateral: FetchedCollateral, now: int) -> bytes:
        return collect(attested.cpu, SimulatedGpuProvider(pki), keys={"ohttp": b"k"},
                       workload=TEST_WORKLOAD, nonce=NONCE, expires_at=now + 3600, now=now,
                       collateral=collateral).to_json()

    with SimulatedVendorServices(pki, days=7).running() as vendors:
        filled = _fetcher(tmp_path, vendors)
        document(filled, int(time.time()))
        first = filled.for_report(_evidence(pki))
        gone = vendors
    until = first.next_update()
    assert until is not None
    due = [until - REFRESH_MARGIN + dt.timedelta(seconds=1)]
    away = _fetcher(tmp_path, gone, clock=lambda: due[0])  # its vendors no longer answer
    assert away.for_report(_evidence(pki)) == first  # served, not a 503
    # ... and a client refuses it by its own clock once it is past its next update
    stale = document(away, int(until.timestamp()) + 60)
    with pytest.raises(VerificationError, match="(?i)crl|ocsp|collateral|next update|stale"):
        verify_evidence(stale, expected_nonce=NONCE,
                        roots=TrustRoots().with_simulated(pki.roots_pem()),
                        policy=policy(), now=until + dt.timedelta(seconds=60))
    # the vendor is back: the background renewal replaces the copy before any report asks
    with SimulatedVendorServices(pki, days=7).running() as back:
        back.collateral_options["now"] = due[0]
        renewing = _fetcher(tmp_path, back, clock=lambda: due[0])
        renewing.for_report(_evidence(pki))
        renewing.refresh()
        assert back.requests["/vcek/v1/Simulated/crl"] == 1
        assert renewing.for_report(_evidence(pki)).amd_crl != first.amd_crl
