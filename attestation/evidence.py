"""The evidence document served at `GET /v1/attestation/report` (format version 2).

JSON, binary fields in standard base64:
    {"format": "cloister-evidence/2", "platform", "nonce", "generated_at", "expires_at",
     "keys": {name: base64}, "workload": {manifest}, "workload_digest": hex,
     "report": base64, "aux": base64,
     "gpus": [{"report": base64, "certificate_chain": PEM}],
     "init_data": base64 | null, "collateral": {"tdx": {...} | null, "amd_crl": base64 | null,
                                                "gpu_ocsp": [base64, ...]}}
`keys` holds every public key the gateway accepts traffic for, `workload` the manifest
of what it runs (`attestation.workload`); the hardware report binds both, with the nonce,
the GPU evidence and the time window (`attestation.binding`). `collateral` is the vendors'
signed revocation lists and TCB data a verifier needs offline (`attestation.collateral`).
The `platform` label is a hint for people: verifiers decide the platform by which pinned
root verified the report.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from attestation import binding
from attestation.collateral import Collateral, CollateralSource
from attestation.errors import Reason, VerificationError
from attestation.types import CpuProvider, GpuProvider
from attestation.workload import workload_digest

FORMAT = "cloister-evidence/2"
# A document is a few KiB per GPU plus the manifest; anything near this is not one.
MAX_DOCUMENT_SIZE = 1 << 20


@dataclass(frozen=True)
class EvidenceDocument:
    platform: str
    nonce: bytes
    generated_at: int
    expires_at: int
    keys: dict[str, bytes]
    workload: dict[str, Any]
    workload_digest: bytes
    report: bytes
    aux: bytes
    gpus: tuple[tuple[bytes, bytes], ...]
    # A Confidential Containers init-data document, when the launch pin is its hash.
    init_data: bytes | None = None
    collateral: Collateral = Collateral()

    def to_json(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "platform": self.platform, "nonce": self.nonce.hex(),
            "generated_at": self.generated_at, "expires_at": self.expires_at,
            "keys": {k: b64(v) for k, v in self.keys.items()},
            "workload": self.workload, "workload_digest": self.workload_digest.hex(),
            "report": b64(self.report), "aux": b64(self.aux),
            "gpus": [{"report": b64(r), "certificate_chain": c.decode()} for r, c in self.gpus],
            "init_data": None if self.init_data is None else b64(self.init_data),
            "collateral": self.collateral.to_json(),
        }).encode()

    @classmethod
    def from_json(cls, data: bytes) -> EvidenceDocument:
        if len(data) > MAX_DOCUMENT_SIZE:
            raise VerificationError(Reason.MALFORMED, "evidence document too large")
        try:
            doc: dict[str, Any] = json.loads(data)
            if doc["format"] != FORMAT:
                raise VerificationError(Reason.UNSUPPORTED, f"evidence format {doc['format']!r}")
            if not isinstance(doc["workload"], dict):
                raise ValueError("the workload manifest must be an object")
            dec = _b64decode
            return cls(
                platform=str(doc["platform"]), nonce=bytes.fromhex(doc["nonce"]),
                generated_at=int(doc["generated_at"]), expires_at=int(doc["expires_at"]),
                keys={str(k): dec(v) for k, v in doc["keys"].items()},
                workload=doc["workload"],
                workload_digest=bytes.fromhex(doc["workload_digest"]),
                report=dec(doc["report"]), aux=dec(doc["aux"]),
                gpus=tuple((dec(g["report"]), g["certificate_chain"].encode())
                           for g in doc["gpus"]),
                init_data=None if doc.get("init_data") is None else dec(doc["init_data"]),
                collateral=Collateral.from_json(doc.get("collateral")),
            )
        except VerificationError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VerificationError(Reason.MALFORMED, "malformed evidence document") from exc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def collect(cpu: CpuProvider, gpu: GpuProvider, *, keys: dict[str, bytes],
            workload: dict[str, Any], nonce: bytes, expires_at: int, now: int,
            init_data: bytes | None = None, collateral: CollateralSource | None = None
            ) -> EvidenceDocument:
    """GPU reports first (with the derived GPU nonce), then one CPU report over all, then
    the collateral that report needs."""
    digest = binding.keys_digest(keys)
    manifest_digest = workload_digest(workload)
    gpus = gpu.get_reports(binding.gpu_nonce(nonce, digest))
    data = binding.report_data(digest_of_keys=digest, nonce=nonce,
                               digest_of_gpus=binding.gpu_evidence_digest(gpus),
                               digest_of_workload=manifest_digest, generated_at=now,
                               expiry=expires_at)
    evidence = cpu.get_report(data)
    vendors = Collateral()
    if collateral is not None:
        vendors = collateral.for_report(evidence)
        if gpus:
            vendors = dataclasses.replace(vendors, gpu_ocsp=collateral.for_gpus(
                [chain for _, chain in gpus]))
    return EvidenceDocument(evidence.platform, nonce, now, expires_at, dict(keys),
                            workload, manifest_digest, evidence.report, evidence.aux,
                            tuple(gpus), init_data, vendors)
