"""One registry names the TEE platforms (`attestation.platforms`): a third platform,
written here in the test suite with its simulated twin and added to the two registries,
is chosen by `--attestation`, its reports are recognised and verified to its pinned
root, its launch field pins the workload, its section of reference values parses and is
held against the report, and a statement accepting it is accepted, with no other edit.
Its report is a toy (an Ed25519 signature over four fields); what is under test is
that nothing lists platforms by hand."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from attestation import platforms
from attestation.collateral import Collateral
from attestation.errors import Reason, VerificationError
from attestation.evidence import collect
from attestation.platform import Hardware, PlatformValues
from attestation.providers import attestation_choices, select_providers
from attestation.reference import ReferenceValues
from attestation.simulated import SimulatedPki, twins
from attestation.simulated.twins import SimulatedCollateral, SimulatedTwin
from attestation.types import CpuEvidence, CpuProvider
from attestation.verify import Policy, TrustRoots, verify_evidence
from attestation.workload import workload_digest
from testkit.attested import TEST_WORKLOAD

MAGIC = b"TOY1"
ROOT = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)  # the toy vendor's root
ROOT_PUBLIC = ROOT.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
FINGERPRINT = hashlib.sha256(ROOT_PUBLIC).hexdigest()
MEASUREMENT = b"\x42" * 32
NONCE = b"\x01" * 32


@dataclass(frozen=True)
class ToyReport:
    report_data: bytes
    launch_field: bytes
    measurement: bytes


@dataclass(frozen=True)
class ToyValues:
    measurements: frozenset[str]

    def to_json(self) -> dict[str, Any]:
        return {"measurements": sorted(self.measurements)}


def _parse(report: bytes) -> ToyReport:
    body = report[len(MAGIC):-64]
    if len(body) != 64 + 32 + 32:
        raise VerificationError(Reason.MALFORMED, "not a toy report")
    return ToyReport(body[:64], body[64:96], body[96:])


class ToyTee:
    name = "toy-tee"
    choice = "toy"
    vendor = "toy-vendor"
    production_roots = frozenset({"00" * 32})  # nothing this test signs with
    launch_field_size = 32
    tsm_provider = "toy_guest"
    collateral_service = "https://toy.invalid"

    def recognises(self, report: bytes, aux: bytes) -> bool:
        return report.startswith(MAGIC)

    def verify(self, report: bytes, aux: bytes, collateral: Collateral, *,
               roots: frozenset[str], now: dt.datetime, check_revocation: bool) -> Hardware:
        root = hashlib.sha256(aux).hexdigest()
        if root not in roots:
            raise VerificationError(Reason.UNTRUSTED_ROOT, "not a pinned toy root")
        try:
            Ed25519PublicKey.from_public_bytes(aux).verify(report[-64:], report[:-64])
        except InvalidSignature:
            raise VerificationError(Reason.BAD_SIGNATURE, "toy report signature") from None
        parsed = _parse(report)
        return Hardware(self.name, root, parsed.report_data, parsed.launch_field,
                        parsed.measurement.hex(), "toy", False, parsed,
                        collateral_checked="the toy vendor has no collateral")

    def launch_field(self, report: bytes) -> bytes:
        return _parse(report).launch_field

    def parse_values(self, raw: Mapping[str, Any]) -> ToyValues:
        return ToyValues(frozenset(str(m) for m in raw.get("measurements", ())))

    def default_values(self) -> ToyValues:
        return ToyValues(frozenset())

    def check(self, hardware: Hardware, values: PlatformValues, *,
              any_measurement: bool = False) -> None:
        assert isinstance(values, ToyValues)
        if not any_measurement and hardware.measurement not in values.measurements:
            raise VerificationError(Reason.MEASUREMENT, "toy measurement not accepted")

    def fallback_provider(self) -> CpuProvider | None:
        return None

    def collateral_key(self, evidence: CpuEvidence) -> str:
        return self.name

    def fetch_collateral(self, evidence: CpuEvidence, service: str,
                         get: Callable[[str], bytes]) -> Collateral:
        return Collateral()


TOY = ToyTee()


def _toy_report(pki: object, report_data: bytes, launch_field: bytes) -> tuple[bytes, bytes]:
    signed = MAGIC + report_data + launch_field.ljust(32, b"\x00") + MEASUREMENT
    return signed + ROOT.sign(signed), ROOT_PUBLIC


TOY_TWIN = SimulatedTwin(TOY, "simulated-toy", _toy_report, lambda pki: Collateral(),
                         lambda: ToyValues(frozenset({MEASUREMENT.hex()})))


@pytest.fixture
def registered(monkeypatch) -> None:
    monkeypatch.setattr(platforms, "CPU_PLATFORMS", (*platforms.CPU_PLATFORMS, TOY))
    monkeypatch.setattr(twins, "TWINS", (*twins.TWINS, TOY_TWIN))


def _document(tmp_path, manifest: dict[str, Any]) -> bytes:
    """What `cloister serve --attestation simulated-toy` attests (its GPU from the
    simulated PKI in `tmp_path`)."""
    pki = SimulatedPki.load_or_create(tmp_path)
    sources = select_providers("simulated-toy", state_dir=tmp_path,
                               collateral=SimulatedCollateral(pki),
                               simulated_launch_pin=workload_digest(manifest))
    now = int(time.time())
    return collect(sources.cpu, sources.gpu, keys={"ohttp": b"key"}, workload=manifest,
                   nonce=NONCE, expires_at=now + 3600, now=now,
                   collateral=sources.collateral).to_json()


def _verify(tmp_path, document: bytes, values: ReferenceValues):  # type: ignore[no-untyped-def]
    """A client trusting the simulated PKI and the toy vendor's root."""
    pki = TrustRoots().with_simulated(SimulatedPki.load_or_create(tmp_path).roots_pem())
    roots = TrustRoots({**pki.vendors, "toy-vendor": frozenset({FINGERPRINT})},
                       pki.simulated | {FINGERPRINT})
    return verify_evidence(document, expected_nonce=NONCE, roots=roots,
                           policy=Policy((values,)), now=dt.datetime.now(dt.UTC))


def test_a_registered_platform_is_chosen_verified_pinned_and_accepted(registered,
                                                                      tmp_path) -> None:
    from attestation.simulated import release

    assert {"toy", "simulated-toy"} <= set(attestation_choices())
    values = release.reference_values(workload_digest(TEST_WORKLOAD).hex(), version=1,
                                      now=dt.datetime.now(dt.UTC))
    assert values.platforms["simulated-toy-tee"] == ToyValues(frozenset({MEASUREMENT.hex()}))
    parsed = ReferenceValues.parse(values.to_json())  # the section goes through the registry
    assert parsed.platforms["simulated-toy-tee"] == values.platforms["simulated-toy-tee"]

    claims = _verify(tmp_path, _document(tmp_path, TEST_WORKLOAD), parsed)
    assert claims.platform == "simulated-toy-tee"
    assert claims.measurement == MEASUREMENT.hex()
    assert claims.workload.pinned_at_launch
    assert claims.accepted == parsed


def test_the_registered_platforms_values_are_held_against_its_report(registered,
                                                                     tmp_path) -> None:
    other = ReferenceValues({"simulated-toy-tee": ToyValues(frozenset({"00" * 32}))})
    with pytest.raises(VerificationError) as refused:
        _verify(tmp_path, _document(tmp_path, TEST_WORKLOAD), other)
    assert refused.value.reason is Reason.MEASUREMENT
    snp_only = dataclasses.replace(other, platforms={})
    with pytest.raises(VerificationError) as refused:
        _verify(tmp_path, _document(tmp_path, TEST_WORKLOAD), snp_only)
    assert refused.value.reason is Reason.PLATFORM_NOT_PINNED


def test_without_registration_the_platform_is_unknown_everywhere(tmp_path) -> None:
    assert "simulated-toy" not in attestation_choices()
    with pytest.raises(ValueError, match="unknown platform"):
        ReferenceValues.parse({"platforms": {"toy-tee": {"measurements": []}}})
    report, aux = _toy_report(None, b"\x00" * 64, b"")
    with pytest.raises(VerificationError) as refused:
        platforms.cpu_platform("toy-tee")
    assert refused.value.reason is Reason.UNSUPPORTED
    assert not any(p.recognises(report, aux) for p in platforms.CPU_PLATFORMS)
