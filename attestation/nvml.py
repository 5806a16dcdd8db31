"""NVIDIA GPU evidence through NVML (`nvidia-ml-py`), for H100s in confidential-computing
mode.

At start: the system's CC state must be feature on, production environment, developer
tools off; each GPU's report is then requested with a fresh nonce and verified locally
against the pinned NVIDIA root, and only then are the GPUs set ready to accept work
(`nvmlSystemSetConfComputeGpusReadyState`). Per report: `get_reports(nonce)` returns each
GPU's SPDM report over the derived GPU nonce with its certificate chain.

The driver's attestation chain stops below the root; the NVIDIA Device Identity CA
(public, pinned by fingerprint in `roots.py`) is appended from `data/`.
"""

from __future__ import annotations

import datetime as dt
import os
from importlib import resources
from typing import Any

from attestation import gpu as gpu_report
from attestation.errors import VerificationError
from attestation.roots import PRODUCTION_NVIDIA_ROOTS
from attestation.types import ProviderError
from attestation.x509chain import load_pem_chain

NVIDIA_ROOT_PEM = "nvidia-device-identity-ca.pem"


def _load_nvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise NoGpuFound("nvidia-ml-py is not installed") from exc
    return pynvml


class NoGpuFound(ProviderError):
    """NVML or a GPU is absent: a CPU-only deployment, not a misconfigured one."""


class NvmlGpuProvider:
    def __init__(self, nvml: Any = None, *, trusted_roots: frozenset[str] = PRODUCTION_NVIDIA_ROOTS
                 ) -> None:
        self._nvml = nvml if nvml is not None else _load_nvml()
        self._roots = trusted_roots
        try:
            self._nvml.nvmlInit()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i)
                             for i in range(self._nvml.nvmlDeviceGetCount())]
        except Exception as exc:  # noqa: BLE001 - NVMLError and its many subclasses
            raise NoGpuFound(f"NVML unavailable: {type(exc).__name__}") from exc
        if not self._handles:
            raise NoGpuFound("no NVIDIA GPU found")
        self._check_cc_state()

    def _check_cc_state(self) -> None:
        n = self._nvml
        state = n.nvmlSystemGetConfComputeState()
        if state.ccFeature != n.NVML_CC_SYSTEM_FEATURE_ENABLED:
            raise ProviderError("GPU confidential computing is off")
        if state.environment != n.NVML_CC_SYSTEM_ENVIRONMENT_PROD:
            raise ProviderError("GPU confidential computing is not in production mode")
        if state.devToolsMode != n.NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF:
            raise ProviderError("GPU developer tools mode is on")

    def get_reports(self, nonce: bytes) -> list[tuple[bytes, bytes]]:
        return [self._report(handle, nonce) for handle in self._handles]

    def _report(self, handle: Any, nonce: bytes) -> tuple[bytes, bytes]:
        n = self._nvml
        try:
            report = n.nvmlDeviceGetConfComputeGpuAttestationReport(handle, list(nonce))
            cert = n.nvmlDeviceGetConfComputeGpuCertificate(handle)
        except Exception as exc:  # noqa: BLE001
            raise ProviderError(f"NVML refused the GPU report: {type(exc).__name__}") from exc
        raw = bytes(report.attestationReport[:report.attestationReportSize])
        chain = bytes(cert.attestationCertChain[:cert.attestationCertChainSize])
        return raw, _with_root(chain)

    def verify_and_set_ready(self, *, now: dt.datetime | None = None) -> None:
        """Verify every GPU locally with a fresh nonce, then let them accept work."""
        nonce = os.urandom(32)
        for raw, chain in self.get_reports(nonce):
            try:
                gpu_report.verify_gpu_report(raw, chain, expected_nonce=nonce,
                                             trusted_roots=self._roots,
                                             now=now or dt.datetime.now(dt.UTC))
            except VerificationError as exc:
                raise ProviderError(f"local GPU verification failed: {exc}") from exc
        self._nvml.nvmlSystemSetConfComputeGpusReadyState(1)


def _with_root(chain: bytes) -> bytes:
    certs = load_pem_chain(chain)
    if certs and certs[-1].issuer == certs[-1].subject:
        return chain
    root = resources.files("attestation").joinpath("data", NVIDIA_ROOT_PEM).read_bytes()
    return chain.rstrip(b"\n") + b"\n" + root
