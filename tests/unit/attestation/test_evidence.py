"""Simulated evidence end to end through the real parsers, binding and policy."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from pathlib import Path

import pytest

from attestation import binding, simulated
from attestation.errors import Reason, VerificationError
from attestation.evidence import EvidenceDocument, collect
from attestation.platforms.snp import SnpValues
from attestation.platforms.tdx import TdxValues
from attestation.providers import ConfigfsTsmProvider, ProviderError
from attestation.reference import GpuValues
from attestation.verify import Policy, TrustRoots, verify_evidence
from attestation.workload import workload_digest
from testkit.attested import MODEL_DIGEST, TEST_WORKLOAD, accepting, workload
from testkit.attested import policy as client_policy
from testkit.attested import simulated as simulated_tee


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> simulated.SimulatedPki:
    return simulated.SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def roots(pki) -> TrustRoots:
    return TrustRoots().with_simulated(pki.roots_pem())


KEYS = {"ohttp": b"\x00\x29config-bytes"}


def _doc(pki, nonce=b"n" * 32, keys=KEYS, expires_in=3600, now=None, manifest=None,
         tdx=False, pin=None, init_data=None) -> bytes:
    now = int(time.time()) if now is None else now
    attested = simulated_tee(pki, manifest, tdx=tdx, pin=pin)
    return collect(attested.cpu, attested.gpu, keys=keys, workload=attested.workload,
                   nonce=nonce, expires_at=now + expires_in, now=now,
                   init_data=init_data, collateral=attested.collateral).to_json()


def _verify(doc, roots, nonce=b"n" * 32, policy=None, now=None):
    now = now or dt.datetime.now(dt.UTC)
    policy = policy or client_policy()
    return verify_evidence(doc, expected_nonce=nonce, roots=roots, policy=policy, now=now)


def test_simulated_evidence_verifies_with_its_roots_named(pki, roots) -> None:
    claims = _verify(_doc(pki), roots)
    assert claims.platform == "simulated-sev-snp"
    assert claims.keys == KEYS
    assert claims.measurement == simulated.simulated_measurement().hex()
    assert claims.gpus[0].driver_version == "550.90.07"
    assert not claims.debug


def test_production_roots_reject_simulated_evidence(pki) -> None:
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki), TrustRoots())
    assert err.value.reason is Reason.UNTRUSTED_ROOT


def test_swapped_key_is_a_binding_mismatch(pki, roots) -> None:
    doc = json.loads(_doc(pki))
    doc["keys"]["ohttp"] = "c3dhcHBlZA=="
    with pytest.raises(VerificationError) as err:
        _verify(json.dumps(doc).encode(), roots)
    assert err.value.reason in (Reason.BINDING_MISMATCH, Reason.NONCE_MISMATCH)


def test_stale_nonce_is_rejected(pki, roots) -> None:
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki, nonce=b"o" * 32), roots)
    assert err.value.reason is Reason.NONCE_MISMATCH


def test_replayed_report_with_a_rewritten_nonce_fails_the_binding(pki, roots) -> None:
    doc = json.loads(_doc(pki, nonce=b"o" * 32))
    doc["nonce"] = (b"n" * 32).hex()
    with pytest.raises(VerificationError) as err:
        _verify(json.dumps(doc).encode(), roots)
    assert err.value.reason in (Reason.BINDING_MISMATCH, Reason.NONCE_MISMATCH)


def test_expired_and_old_reports_are_rejected(pki, roots) -> None:
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki, expires_in=-1), roots)
    assert err.value.reason is Reason.EXPIRED
    old = _doc(pki, now=int(time.time()) - 3600)
    with pytest.raises(VerificationError) as err:
        _verify(old, roots)
    assert err.value.reason is Reason.EXPIRED


SNP = "simulated-sev-snp"


def test_reference_values_pin_measurement_and_gpu_firmware(pki, roots) -> None:
    other = accepting(platforms={SNP: SnpValues(frozenset({"00" * 48}))})
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki), roots, policy=client_policy(other))
    assert err.value.reason is Reason.MEASUREMENT
    firmware = accepting(gpu=GpuValues(vbios=frozenset({"96.00.00.00.00"})))
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki), roots, policy=client_policy(firmware))
    assert err.value.reason is Reason.GPU_FIRMWARE
    ok = accepting(gpu=GpuValues(required=True, vbios=frozenset({"96.00.9F.00.01"})))
    claims = _verify(_doc(pki), roots, policy=client_policy(ok))
    assert claims.platform == SNP and claims.accepted is ok


def test_matching_is_per_platform(pki, roots) -> None:
    """Values that pin SNP say nothing about TDX evidence (and the reverse)."""
    only_snp = accepting(platforms={SNP: SnpValues(frozenset(
        {simulated.simulated_measurement().hex()}))})
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki, tdx=True), roots, policy=client_policy(only_snp))
    assert err.value.reason is Reason.PLATFORM_NOT_PINNED
    only_tdx = accepting(platforms={"simulated-tdx": TdxValues(frozenset(
        {simulated.simulated_measurement().hex()}))})
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki), roots, policy=client_policy(only_tdx))
    assert err.value.reason is Reason.PLATFORM_NOT_PINNED
    with pytest.raises(VerificationError) as err:  # nothing pins anything: refused
        _verify(_doc(pki), roots, policy=Policy())
    assert err.value.reason is Reason.NO_REFERENCE_VALUES


def test_accept_any_measurement_is_an_explicit_development_mode(pki, roots) -> None:
    claims = _verify(_doc(pki), roots, policy=Policy(accept_any_measurement=True))
    assert claims.accepted is None


@pytest.mark.parametrize("pinned", ["workloads", "model_digests"])
def test_accept_any_measurement_still_checks_the_workload_and_models(pki, roots,
                                                                     pinned) -> None:
    """It waives the launch measurement only: a policy that names workloads or model
    digests is still held to them (issue 27)."""
    other = {"workloads": frozenset({"00" * 32}),
             "model_digests": {"test-chat": frozenset({"sha256:" + "00" * 32})}}[pinned]
    values = accepting(**{pinned: other})
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki), roots, policy=Policy((values,), accept_any_measurement=True))
    assert err.value.reason is {"workloads": Reason.WORKLOAD_NOT_ALLOWED,
                                "model_digests": Reason.MODEL_NOT_ALLOWED}[pinned]
    claims = _verify(_doc(pki), roots, policy=Policy((accepting(),),
                                                     accept_any_measurement=True))
    assert claims.accepted is None


def test_policy_file_loads_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('max_age_seconds = 60\nworkloads = ["CD"]\nrequire_launch_pinning = false\n'
                    '[model_digests]\nm = ["sha256:ef"]\n'
                    '[platforms.sev-snp]\nmeasurements = [{vcpus = 4, vcpu_type = "EPYC-v4", '
                    'measurement = "AB"}]\n'
                    'min_tcb = {boot_loader = 1, tee = 0, snp = 5, microcode = 40}\n'
                    '[platforms.tdx]\nmrtd = ["EF"]\nrtmr1 = ["01"]\n'
                    'tcb_statuses = ["UpToDate"]\n[gpu]\nrequired = true\n')
    policy = Policy.load(path)
    (values,) = policy.values
    snp_values = values.platforms["sev-snp"]
    assert isinstance(snp_values, SnpValues) and snp_values.measurements == frozenset({"ab"})
    assert snp_values.min_tcb is not None and snp_values.min_tcb.snp == 5
    assert snp_values.forbidden_policy_bits == ("debug", "migrate_ma") and snp_values.vmpl == 0
    tdx_values = values.platforms["tdx"]
    assert isinstance(tdx_values, TdxValues) and tdx_values.rtmrs == {1: frozenset({"01"})}
    assert values.workloads == frozenset({"cd"}) and not policy.require_launch_pinning
    assert values.model_digests == {"m": frozenset({"sha256:ef"})} and values.gpu.required
    assert policy.max_age_seconds == 60


def test_tampered_gpu_report_fails(pki, roots) -> None:
    doc = json.loads(_doc(pki))
    raw = bytearray(__import__("base64").b64decode(doc["gpus"][0]["report"]))
    raw[50] ^= 1
    doc["gpus"][0]["report"] = __import__("base64").b64encode(bytes(raw)).decode()
    with pytest.raises(VerificationError):
        _verify(json.dumps(doc).encode(), roots)


@pytest.mark.parametrize("junk", [b"", b"{}", b"[]", b'{"format": "other/9"}', b"\xff" * 10])
def test_garbage_documents_are_malformed_not_exceptions(roots, junk) -> None:
    with pytest.raises(VerificationError):
        _verify(junk, roots)


def test_pki_is_reused_from_its_folder(tmp_path: Path) -> None:
    first = simulated.SimulatedPki.load_or_create(tmp_path)
    again = simulated.SimulatedPki.load_or_create(tmp_path)
    assert first.roots_pem() == again.roots_pem()
    assert first.chip_id == again.chip_id
    assert oct((tmp_path / simulated.PKI_FILE).stat().st_mode)[-3:] == "600"


def test_configfs_tsm_reports_missing_tree(tmp_path: Path) -> None:
    with pytest.raises(ProviderError):
        ConfigfsTsmProvider(tmp_path / "absent")


def test_binding_report_data_depends_on_every_input() -> None:
    base = dict(digest_of_keys=b"k" * 32, nonce=b"n" * 32, digest_of_gpus=b"g" * 32,
                digest_of_workload=b"w" * 32, generated_at=5, expiry=1)
    first = binding.report_data(**base)
    for key, value in (("digest_of_keys", b"K" * 32), ("nonce", b"N" * 32),
                       ("digest_of_gpus", b"G" * 32), ("digest_of_workload", b"W" * 32),
                       ("generated_at", 6), ("expiry", 2)):
        assert binding.report_data(**{**base, key: value}) != first
    assert len(first) == 64


def test_evidence_document_round_trips(pki) -> None:
    doc = EvidenceDocument.from_json(_doc(pki))
    assert EvidenceDocument.from_json(doc.to_json()) == doc


class FakeConfigfsTsm(ConfigfsTsmProvider):
    """configfs-tsm over a plain folder (a test double): `_new_entry` does what the
    kernel's mkdir does, creating the attribute files; outblob is a simulated report."""

    def __init__(self, base: Path, pki: simulated.SimulatedPki, provider: str = "sev_guest",
                 unreadable_aux: bool = False) -> None:
        self._pki, self._provider, self._unreadable = pki, provider, unreadable_aux
        super().__init__(base)

    def _new_entry(self) -> Path:
        entry = super()._new_entry()
        (entry / "provider").write_text(self._provider + "\n")
        (entry / "generation").write_text("1\n")
        (entry / "outblob").write_bytes(simulated.snp_report(self._pki, b"\x00" * 64))
        (entry / "auxblob").write_bytes(self._pki.cert_table())
        if self._unreadable:  # the kernel fails the read
            (entry / "auxblob").unlink()
            (entry / "auxblob").mkdir()
        return entry


def test_configfs_tsm_provider_reads_a_fake_tree(tmp_path: Path, pki) -> None:
    provider = FakeConfigfsTsm(tmp_path, pki)
    assert provider.platform == "sev-snp"
    evidence = provider.get_report(b"r" * 64)
    assert len(evidence.report) == 1184
    assert evidence.aux == pki.cert_table()
    assert list(tmp_path.iterdir()) == []  # entries are removed


def test_configfs_tsm_provider_maps_tdx_and_reports_failures(tmp_path: Path, pki) -> None:
    assert FakeConfigfsTsm(tmp_path, pki, provider="tdx_guest").platform == "tdx"
    broken = FakeConfigfsTsm(tmp_path, pki, unreadable_aux=True)
    with pytest.raises(ProviderError):
        broken.get_report(b"r" * 64)
    with pytest.raises(ValueError):
        FakeConfigfsTsm(tmp_path, pki).get_report(b"short")


def test_simulated_tdx_evidence_verifies_through_the_real_quote_parser(pki, roots) -> None:
    doc = _doc(pki, tdx=True)
    claims = _verify(doc, roots)
    assert claims.workload.pinned_at_launch
    assert claims.platform == "simulated-tdx"
    assert claims.measurement == simulated.simulated_measurement().hex()
    with pytest.raises(VerificationError) as err:
        _verify(doc, TrustRoots())
    assert err.value.reason is Reason.UNTRUSTED_ROOT
    other = accepting(platforms={"simulated-tdx": TdxValues(frozenset({"00" * 48}))})
    with pytest.raises(VerificationError) as err:
        _verify(doc, roots, policy=client_policy(other))
    assert err.value.reason is Reason.MEASUREMENT


# --- the workload (issue 12) --------------------------------------------------------------

def test_the_verified_claims_name_the_workload(pki, roots) -> None:
    claims = _verify(_doc(pki), roots)
    assert claims.workload.digest == workload_digest(TEST_WORKLOAD).hex()
    assert claims.workload.pinned_at_launch
    assert [(m.name, m.digest) for m in claims.workload.models] == [("test-chat", MODEL_DIGEST)]


def test_a_manifest_that_does_not_hash_to_the_bound_digest_is_refused(pki, roots) -> None:
    doc = json.loads(_doc(pki))
    doc["workload"]["settings"]["insecure_plaintext"] = True  # the operator's edit
    with pytest.raises(VerificationError) as err:
        _verify(json.dumps(doc).encode(), roots)
    assert err.value.reason is Reason.WORKLOAD_MISMATCH
    doc["workload_digest"] = workload_digest(doc["workload"]).hex()  # and the digest too
    with pytest.raises(VerificationError) as err:
        _verify(json.dumps(doc).encode(), roots)
    assert err.value.reason is Reason.BINDING_MISMATCH


@pytest.mark.parametrize("tdx", [False, True])
def test_a_workload_not_pinned_at_launch_is_refused_by_default(pki, roots, tdx) -> None:
    doc = _doc(pki, pin=b"", tdx=tdx)
    with pytest.raises(VerificationError) as err:
        _verify(doc, roots)
    assert err.value.reason is Reason.NOT_PINNED
    claims = _verify(doc, roots, policy=client_policy(require_launch_pinning=False))
    assert not claims.workload.pinned_at_launch


@pytest.mark.parametrize("tdx", [False, True])
def test_a_launch_pin_that_names_another_workload_is_refused(pki, roots, tdx) -> None:
    other = workload_digest(workload(max_tokens=8))
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki, pin=other, tdx=tdx), roots,
                policy=client_policy(require_launch_pinning=False))
    assert err.value.reason is Reason.LAUNCH_MISMATCH


def test_reference_values_pin_workload_and_model_digests(pki, roots) -> None:
    doc = _doc(pki)
    assert _verify(doc, roots)  # the test values name this workload
    with pytest.raises(VerificationError) as err:
        _verify(doc, roots, policy=client_policy(accepting(workloads=frozenset({"00" * 32}))))
    assert err.value.reason is Reason.WORKLOAD_NOT_ALLOWED
    with pytest.raises(VerificationError) as err:
        _verify(doc, roots, policy=client_policy(accepting(
            model_digests={"test-chat": frozenset({"sha256:00"})})))
    assert err.value.reason is Reason.MODEL_NOT_ALLOWED
    ok = accepting(model_digests={"test-chat": frozenset({MODEL_DIGEST})})
    assert _verify(doc, roots, policy=client_policy(ok)).workload.models[0].name == "test-chat"


def test_the_platform_label_must_match_what_verified(pki, roots) -> None:
    doc = json.loads(_doc(pki))
    doc["platform"] = "sev-snp"  # simulated evidence relabelled
    with pytest.raises(VerificationError) as err:
        _verify(json.dumps(doc).encode(), roots)
    assert err.value.reason is Reason.POLICY


def _init_data(digest_hex: str, algorithm: str = "sha256") -> bytes:
    return (f'version = "0.1.0"\nalgorithm = "{algorithm}"\n[data]\n'
            f'"cloister.toml" = \'workload_digest = "{digest_hex}"\'\n').encode()


@pytest.mark.parametrize(("tdx", "algorithm"), [(False, "sha256"), (True, "sha384")])
def test_a_confidential_containers_init_data_pin_names_the_workload(pki, roots, tdx,
                                                                   algorithm) -> None:
    mine = workload_digest(TEST_WORKLOAD).hex()
    document = _init_data(mine, algorithm)
    launch = getattr(hashlib, algorithm)(document).digest()[:48 if tdx else 32]
    claims = _verify(_doc(pki, tdx=tdx, pin=launch, init_data=document), roots)
    assert claims.workload.digest == mine
    assert claims.workload.pinned_at_launch
    other = _init_data("00" * 32, algorithm)
    relaunch = getattr(hashlib, algorithm)(other).digest()[:48 if tdx else 32]
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki, tdx=tdx, pin=relaunch, init_data=other), roots)
    assert err.value.reason is Reason.LAUNCH_MISMATCH
    with pytest.raises(VerificationError) as err:  # the document swapped after launch
        _verify(_doc(pki, tdx=tdx, pin=relaunch, init_data=document), roots)
    assert err.value.reason is Reason.LAUNCH_MISMATCH


def test_reference_values_that_pin_init_data_refuse_another_document(pki, roots) -> None:
    """The init-data document carries the Kata agent policy: a document that names the
    same workload with another policy (say, one allowing exec) hashes to another launch
    field, and values that pin the release's document refuse it (issue 27)."""
    from attestation.init_data import InitData, document

    mine = workload_digest(TEST_WORKLOAD)
    released = document(mine, policy="package agent_policy\ndefault ExecProcessRequest := false\n")
    lax = document(mine, policy="package agent_policy\ndefault ExecProcessRequest := true\n")
    pinned = accepting(init_data=frozenset({InitData.parse(released).digest}))
    for doc, ok in ((released, True), (lax, False)):
        launch = hashlib.sha256(doc).digest()
        evidence = _doc(pki, pin=launch, init_data=doc)
        if ok:
            assert _verify(evidence, roots, policy=client_policy(pinned)).workload.pinned_at_launch
        else:
            with pytest.raises(VerificationError) as err:
                _verify(evidence, roots, policy=client_policy(pinned))
            assert err.value.reason is Reason.INIT_DATA_NOT_ALLOWED
    # pinned directly (no init-data at all) is not the pinned document either
    with pytest.raises(VerificationError) as err:
        _verify(_doc(pki), roots, policy=client_policy(pinned))
    assert err.value.reason is Reason.INIT_DATA_NOT_ALLOWED
