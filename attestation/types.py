"""What evidence providers are and return: the leaf every provider, the evidence
collector and the gateway import (nothing here imports another attestation module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ProviderError(RuntimeError):
    """Evidence could not be collected (no hardware, kernel refused, raced)."""


@dataclass(frozen=True)
class CpuEvidence:
    platform: str  # "sev-snp", "tdx", "simulated-sev-snp", "simulated-tdx"
    report: bytes
    aux: bytes = b""


class CpuProvider(Protocol):
    platform: str

    def get_report(self, report_data: bytes) -> CpuEvidence: ...


class GpuProvider(Protocol):
    def get_reports(self, nonce: bytes) -> list[tuple[bytes, bytes]]: ...
