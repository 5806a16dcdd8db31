"""The NVML provider against a fake NVML module (a test double with pynvml's surface)."""

from __future__ import annotations

import datetime as dt
import types

import pytest

from attestation import simulated
from attestation.gpu import verify_gpu_report
from attestation.nvml import NvmlGpuProvider
from attestation.providers import ProviderError
from attestation.verify import TrustRoots


class FakeNvml(types.SimpleNamespace):
    NVML_CC_SYSTEM_FEATURE_ENABLED = 1
    NVML_CC_SYSTEM_ENVIRONMENT_PROD = 2
    NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF = 0

    def __init__(self, pki, *, feature=1, environment=2, devtools=0, gpus=2) -> None:
        super().__init__()
        self.pki, self.gpus, self.ready = pki, gpus, None
        self.state = types.SimpleNamespace(ccFeature=feature, environment=environment,
                                           devToolsMode=devtools)

    def nvmlInit(self): pass
    def nvmlDeviceGetCount(self): return self.gpus
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlSystemGetConfComputeState(self): return self.state
    def nvmlSystemSetConfComputeGpusReadyState(self, state): self.ready = state

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle, nonce):
        raw = simulated.gpu_report(self.pki, bytes(nonce))
        return types.SimpleNamespace(attestationReport=list(raw) + [0] * 100,
                                     attestationReportSize=len(raw))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle):
        chain = self.pki.gpu_chain_pem()
        return types.SimpleNamespace(attestationCertChain=chain + b"\x00" * 50,
                                     attestationCertChainSize=len(chain))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return simulated.SimulatedPki.load_or_create(tmp_path_factory.mktemp("pki"))


def _roots(pki):
    return TrustRoots().with_simulated(pki.roots_pem()).of("nvidia")


def test_reports_for_every_gpu_verify(pki) -> None:
    provider = NvmlGpuProvider(FakeNvml(pki), trusted_roots=_roots(pki))
    reports = provider.get_reports(b"\x07" * 32)
    assert len(reports) == 2
    for raw, chain in reports:
        verify_gpu_report(raw, chain, expected_nonce=b"\x07" * 32, trusted_roots=_roots(pki),
                          now=dt.datetime.now(dt.UTC))


def test_gpus_are_set_ready_only_after_local_verification(pki) -> None:
    nvml = FakeNvml(pki)
    NvmlGpuProvider(nvml, trusted_roots=_roots(pki)).verify_and_set_ready()
    assert nvml.ready == 1
    untrusting = FakeNvml(pki)
    with pytest.raises(ProviderError, match="local GPU verification failed"):
        NvmlGpuProvider(untrusting).verify_and_set_ready()  # production roots only
    assert untrusting.ready is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"feature": 0}, "is off"), ({"environment": 1}, "production"),
    ({"devtools": 1}, "developer tools"), ({"gpus": 0}, "no NVIDIA GPU"),
])
def test_cc_state_must_be_on_production_and_locked(pki, kwargs, message) -> None:
    with pytest.raises(ProviderError, match=message):
        NvmlGpuProvider(FakeNvml(pki, **kwargs))


def test_driver_chain_without_root_gets_the_pinned_nvidia_root(vectors) -> None:
    from attestation.nvml import _with_root
    from attestation.roots import PRODUCTION_NVIDIA_ROOTS

    chain = (vectors / "gpu/h100-cert-chain.pem").read_bytes()
    without_root = chain[:chain.rindex(b"-----BEGIN CERTIFICATE-----")]
    raw = bytes.fromhex((vectors / "gpu/h100-report.hex").read_text().strip())
    completed = _with_root(without_root)
    verify_gpu_report(raw, completed, expected_nonce=raw[4:36],
                      trusted_roots=PRODUCTION_NVIDIA_ROOTS,
                      now=dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    assert _with_root(chain) == chain


class FailingNvml(FakeNvml):
    def nvmlInit(self):
        raise RuntimeError("NVML_ERROR_DRIVER_NOT_LOADED")


def test_a_failing_nvml_stops_a_gpu_workload_and_is_no_gpus_otherwise(pki) -> None:
    from attestation.providers import NoGpus, gpu_provider

    with pytest.raises(ProviderError, match="no GPU can be attested"):
        gpu_provider(required=True, nvml=FailingNvml(pki))
    assert isinstance(gpu_provider(required=False, nvml=FailingNvml(pki)), NoGpus)
    nvml = FakeNvml(pki, gpus=0)
    with pytest.raises(ProviderError):
        gpu_provider(required=True, nvml=nvml)
