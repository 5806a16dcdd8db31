"""The security review's hostile evidence, made with the simulated PKI (genuinely signed,
so only the checks under test can refuse it), against the default client's policy: each
defect is refused with its own reason, and the honest evidence next to it verifies."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from typing import Any

import pytest

from attestation import simulated
from attestation.collateral import Collateral
from attestation.errors import Reason, VerificationError
from attestation.evidence import collect
from attestation.platforms.tdx import TdxValues
from attestation.reference import GpuValues
from attestation.simulated.intel import QeReport
from attestation.simulated.twins import SimulatedCollateral, SimulatedGpuProvider
from attestation.types import CpuEvidence
from attestation.verify import Policy, TrustRoots, verify_evidence
from attestation.workload import launch_value, workload_digest
from testkit.attested import TEST_WORKLOAD, accepting
from testkit.attested import policy as client_policy

NONCE = b"h" * 32
DAY = 86400


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> simulated.SimulatedPki:
    return simulated.SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def roots(pki) -> TrustRoots:
    return TrustRoots().with_simulated(pki.roots_pem())


class HostileSnp:
    """An SNP 'host' that launches with whatever VMPL and guest policy it likes."""

    platform = "simulated-sev-snp"

    def __init__(self, pki: simulated.SimulatedPki, manifest: dict[str, Any], **launch: int
                 ) -> None:
        self._pki, self._launch = pki, launch
        self._host_data = launch_value(workload_digest(manifest), self.platform)

    def get_report(self, report_data: bytes) -> CpuEvidence:
        report = simulated.snp_report(self._pki, report_data, host_data=self._host_data,
                                      **self._launch)
        return CpuEvidence(self.platform, report, self._pki.cert_table())


class HostileTdx:
    """A TDX platform whose quoting enclave, TD attributes or module are not Intel's."""

    platform = "simulated-tdx"

    def __init__(self, pki: simulated.SimulatedPki, manifest: dict[str, Any], **quote: Any
                 ) -> None:
        self._pki, self._quote = pki, quote
        self._config_id = launch_value(workload_digest(manifest), self.platform)

    def get_report(self, report_data: bytes) -> CpuEvidence:
        return CpuEvidence(self.platform, self._pki.intel.quote(
            report_data, config_id=self._config_id,
            measurement=simulated.simulated_measurement(), **self._quote))


class FixedCollateral:
    def __init__(self, collateral: Collateral) -> None:
        self._collateral = collateral

    def for_report(self, evidence: CpuEvidence) -> Collateral:
        return self._collateral

    def for_gpus(self, chains) -> tuple[bytes, ...]:
        return self._collateral.gpu_ocsp


class NoGpuEvidence:
    def get_reports(self, nonce: bytes) -> list[tuple[bytes, bytes]]:
        return []


class GpuInMode:
    def __init__(self, pki: simulated.SimulatedPki, mode: int) -> None:
        self._pki, self._mode = pki, mode

    def get_reports(self, nonce: bytes) -> list[tuple[bytes, bytes]]:
        return [(simulated.gpu_report(self._pki, nonce, mode=self._mode),
                 self._pki.gpu_chain_pem())]


def _document(pki, *, cpu=None, gpu=None, collateral=None, manifest=None,
              lifetime: int = 3600, now: int | None = None) -> bytes:
    manifest = TEST_WORKLOAD if manifest is None else manifest
    now = int(time.time()) if now is None else now
    return collect(cpu or HostileSnp(pki, manifest), gpu or SimulatedGpuProvider(pki),
                   keys={"ohttp": b"key"}, workload=manifest, nonce=NONCE,
                   expires_at=now + lifetime, now=now,
                   collateral=collateral or SimulatedCollateral(pki)).to_json()


def _verify(document: bytes, roots: TrustRoots, policy: Policy | None = None):
    return verify_evidence(document, expected_nonce=NONCE, roots=roots,
                           policy=policy or client_policy(), now=dt.datetime.now(dt.UTC))


def _refused(document: bytes, roots: TrustRoots, policy: Policy | None = None) -> Reason:
    with pytest.raises(VerificationError) as err:
        _verify(document, roots, policy)
    return err.value.reason


def test_honest_snp_and_tdx_evidence_verifies(pki, roots) -> None:
    claims = _verify(_document(pki), roots)
    assert claims.platform == "simulated-sev-snp"
    tdx = _verify(_document(pki, cpu=HostileTdx(pki, TEST_WORKLOAD)), roots)
    assert tdx.platform == "simulated-tdx" and tdx.tcb_status == "UpToDate"


# --- the audit's five -------------------------------------------------------------


def test_a_report_from_vmpl_3_is_refused(pki, roots) -> None:
    hostile = HostileSnp(pki, TEST_WORKLOAD, vmpl=3)
    assert _refused(_document(pki, cpu=hostile), roots) is Reason.VMPL


def test_a_guest_policy_allowing_a_migration_agent_is_refused(pki, roots) -> None:
    hostile = HostileSnp(pki, TEST_WORKLOAD,
                         guest_policy=simulated.SIMULATED_GUEST_POLICY | 1 << 18)
    assert _refused(_document(pki, cpu=hostile), roots) is Reason.GUEST_POLICY


def test_a_ten_year_key_expiry_is_refused(pki, roots) -> None:
    document = _document(pki, lifetime=10 * 365 * DAY)
    assert _refused(document, roots) is Reason.EXPIRY_TOO_LONG
    assert _verify(_document(pki, lifetime=25 * 3600), roots)  # the cap itself is fine


def test_a_debug_quoting_enclave_with_a_random_mrsigner_is_refused(pki, roots) -> None:
    debug_qe = QeReport(attributes=bytes([0x13]) + bytes(15), mrsigner=os.urandom(32))
    hostile = HostileTdx(pki, TEST_WORKLOAD, qe=debug_qe)
    assert _refused(_document(pki, cpu=hostile), roots) is Reason.QE_IDENTITY
    only_debug = HostileTdx(pki, TEST_WORKLOAD, qe=QeReport(attributes=bytes([0x13]) + bytes(15)))
    assert _refused(_document(pki, cpu=only_debug), roots) is Reason.QE_IDENTITY


def test_a_revoked_vcek_or_ask_is_refused(pki, roots) -> None:
    for cert in (pki.vcek, pki.ask):
        crl = pki.amd_crl(revoked=(cert.serial_number,))
        document = _document(pki, collateral=FixedCollateral(Collateral(amd_crl=crl)))
        assert _refused(document, roots) is Reason.REVOKED


# --- the rest of the hardware checks ------------------------------------------------


def test_a_revoked_pck_is_refused(pki, roots) -> None:
    collateral = Collateral(tdx=pki.intel.collateral(
        revoked_pcks=(pki.intel.pck_leaf.serial_number,)))
    document = _document(pki, cpu=HostileTdx(pki, TEST_WORKLOAD),
                         collateral=FixedCollateral(collateral))
    assert _refused(document, roots) is Reason.REVOKED


def test_an_out_of_date_tdx_tcb_is_refused_unless_the_values_accept_it(pki, roots) -> None:
    collateral = FixedCollateral(Collateral(tdx=pki.intel.collateral(tcb_status="OutOfDate"),
                                    gpu_ocsp=pki.gpu_ocsp()))
    document = _document(pki, cpu=HostileTdx(pki, TEST_WORKLOAD), collateral=collateral)
    assert _refused(document, roots) is Reason.TCB_STATUS
    values = accepting()
    tdx = values.platforms["simulated-tdx"]
    assert isinstance(tdx, TdxValues)
    lenient = dataclasses.replace(values, platforms={
        "simulated-tdx": dataclasses.replace(tdx, tcb_statuses=frozenset({"UpToDate",
                                                                           "OutOfDate"}))})
    assert _verify(document, roots, client_policy(lenient)).tcb_status == "OutOfDate"


def test_an_unpinned_tdx_module_is_refused(pki, roots) -> None:
    hostile = HostileTdx(pki, TEST_WORKLOAD, mr_seam=b"\x42" * 48)
    assert _refused(_document(pki, cpu=hostile), roots) is Reason.MRSEAM


def test_a_debuggable_td_is_refused(pki, roots) -> None:
    hostile = HostileTdx(pki, TEST_WORKLOAD, td_attributes=(1 | 1 << 28).to_bytes(8, "little"))
    assert _refused(_document(pki, cpu=hostile), roots) is Reason.DEBUG


@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_evidence_without_collateral_is_refused(pki, roots, platform) -> None:
    cpu = HostileTdx(pki, TEST_WORKLOAD) if platform == "tdx" else None
    document = _document(pki, cpu=cpu, collateral=FixedCollateral(Collateral()))
    assert _refused(document, roots) is Reason.COLLATERAL_MISSING


def test_stale_collateral_is_refused(pki, roots) -> None:
    month_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    stale_crl = Collateral(amd_crl=pki.amd_crl(now=month_ago, days=7))
    assert _refused(_document(pki, collateral=FixedCollateral(stale_crl)),
                    roots) is Reason.COLLATERAL_STALE
    stale_tdx = Collateral(tdx=pki.intel.collateral(now=month_ago, days=7))
    document = _document(pki, cpu=HostileTdx(pki, TEST_WORKLOAD),
                         collateral=FixedCollateral(stale_tdx))
    assert _refused(document, roots) is Reason.COLLATERAL_STALE


def test_collateral_signed_by_the_wrong_key_is_refused(pki, roots, tmp_path) -> None:
    other = simulated.SimulatedPki.generate()
    forged = Collateral(amd_crl=other.amd_crl())
    assert _refused(_document(pki, collateral=FixedCollateral(forged)),
                    roots) is Reason.COLLATERAL_INVALID
    forged_tdx = Collateral(tdx=other.intel.collateral())
    document = _document(pki, cpu=HostileTdx(pki, TEST_WORKLOAD),
                         collateral=FixedCollateral(forged_tdx))
    assert _refused(document, roots) is Reason.COLLATERAL_INVALID


def test_a_gpu_workload_without_gpu_evidence_is_refused(pki, roots) -> None:
    gpu_workload = json.loads(json.dumps(TEST_WORKLOAD))
    gpu_workload["dependencies"]["engine_kind"] = "gpu"
    values = client_policy(accepting(gpu_workload))
    document = _document(pki, cpu=HostileSnp(pki, gpu_workload), gpu=NoGpuEvidence(),
                         manifest=gpu_workload)
    assert _refused(document, roots, values) is Reason.GPU_MISSING
    with_gpu = _document(pki, cpu=HostileSnp(pki, gpu_workload), manifest=gpu_workload)
    assert _verify(with_gpu, roots, values).gpus


def test_gpu_mode_and_measurements_are_checked(pki, roots) -> None:
    protected_pcie = _document(pki, gpu=GpuInMode(pki, 2))
    assert _refused(protected_pcie, roots) is Reason.GPU_MODE
    assert _verify(_document(pki, gpu=GpuInMode(pki, 0)), roots).gpus[0].mode == "spt"
    golden = accepting(gpu=GpuValues(measurements={
        1: frozenset({simulated.gpu_measurement(1).hex()})}))
    assert _verify(_document(pki), roots, client_policy(golden))
    wrong = accepting(gpu=GpuValues(measurements={2: frozenset({"00" * 48})}))
    assert _refused(_document(pki), roots, client_policy(wrong)) is Reason.GPU_MEASUREMENT


def test_development_mode_still_refuses_hostile_hardware(pki, roots) -> None:
    """accept_any_measurement waives the measurement, never the hardware checks."""
    anything = Policy(accept_any_measurement=True)
    hostile = HostileSnp(pki, TEST_WORKLOAD, vmpl=1)
    assert _refused(_document(pki, cpu=hostile), roots, anything) is Reason.VMPL
    revoked = Collateral(amd_crl=pki.amd_crl(revoked=(pki.vcek.serial_number,)))
    assert _refused(_document(pki, collateral=FixedCollateral(revoked)),
                    roots, anything) is Reason.REVOKED
    ood = FixedCollateral(Collateral(tdx=pki.intel.collateral(tcb_status="OutOfDate"),
                                    gpu_ocsp=pki.gpu_ocsp()))
    assert _refused(_document(pki, cpu=HostileTdx(pki, TEST_WORKLOAD), collateral=ood),
                    roots, anything) is Reason.TCB_STATUS


def test_a_td_without_sept_ve_disable_is_refused(pki, roots) -> None:
    hostile = HostileTdx(pki, TEST_WORKLOAD, td_attributes=bytes(8))
    assert _refused(_document(pki, cpu=hostile), roots) is Reason.TD_ATTRIBUTES


def test_tdx_values_that_pin_no_mrseam_accept_no_td(pki, roots) -> None:
    values = accepting()
    tdx = values.platforms["simulated-tdx"]
    assert isinstance(tdx, TdxValues)
    unpinned = dataclasses.replace(values, platforms={
        "simulated-tdx": dataclasses.replace(tdx, mrseam=frozenset())})
    document = _document(pki, cpu=HostileTdx(pki, TEST_WORKLOAD))
    assert _refused(document, roots, client_policy(unpinned)) is Reason.MRSEAM
