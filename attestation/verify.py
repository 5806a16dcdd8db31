"""Verify an evidence document: hardware signatures, the binding, freshness, the policy.

The result is the set of claims a client may rely on: platform, measurement, TCB, GPUs,
the public keys the hardware vouches for, and until when.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from attestation import binding, gpu, snp, tdx
from attestation.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, parse_cert_table
from attestation.errors import Reason, VerificationError
from attestation.evidence import EvidenceDocument
from attestation.roots import PRODUCTION_AMD_ARKS, PRODUCTION_INTEL_ROOTS, PRODUCTION_NVIDIA_ROOTS
from attestation.x509chain import fingerprint, load_der, load_pem_chain


@dataclass(frozen=True)
class TrustRoots:
    amd: frozenset[str] = PRODUCTION_AMD_ARKS
    intel: frozenset[str] = PRODUCTION_INTEL_ROOTS
    nvidia: frozenset[str] = PRODUCTION_NVIDIA_ROOTS
    simulated_allowed: bool = False

    def with_simulated(self, roots_pem: bytes) -> TrustRoots:
        """Also trust a simulated test PKI, named explicitly by its root certificates."""
        prints = frozenset(fingerprint(c) for c in load_pem_chain(roots_pem))
        return TrustRoots(self.amd | prints, self.intel | prints, self.nvidia | prints, True)


@dataclass(frozen=True)
class Policy:
    """What to accept. Empty allow-lists accept any value; debug is forbidden by default."""

    measurements: frozenset[str] = frozenset()   # SNP MEASUREMENT, hex
    mrtd: frozenset[str] = frozenset()           # TDX MRTD, hex
    rtmrs: dict[int, str] = field(default_factory=dict)  # TDX RTMR index -> hex
    allow_debug: bool = False
    min_tcb: snp.TcbVersion | None = None
    gpu_vbios: frozenset[str] = frozenset()
    require_gpu: bool = False
    max_age_seconds: int = 300

    @classmethod
    def load(cls, path: Path) -> Policy:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        tcb = raw.get("min_tcb")
        return cls(
            measurements=frozenset(m.lower() for m in raw.get("measurements", [])),
            mrtd=frozenset(m.lower() for m in raw.get("mrtd", [])),
            rtmrs={int(k): v.lower() for k, v in raw.get("rtmrs", {}).items()},
            allow_debug=bool(raw.get("allow_debug", False)),
            min_tcb=snp.TcbVersion(**tcb) if tcb else None,
            gpu_vbios=frozenset(raw.get("gpu_vbios", [])),
            require_gpu=bool(raw.get("require_gpu", False)),
            max_age_seconds=int(raw.get("max_age_seconds", 300)),
        )


@dataclass(frozen=True)
class GpuClaims:
    driver_version: str
    vbios_version: str


@dataclass(frozen=True)
class VerifiedEvidence:
    platform: str
    measurement: str
    tcb: str
    debug: bool
    gpus: tuple[GpuClaims, ...]
    keys: dict[str, bytes]
    expires_at: int


def verify_evidence(document: bytes, *, expected_nonce: bytes, roots: TrustRoots,
                    policy: Policy, now: dt.datetime) -> VerifiedEvidence:
    doc = EvidenceDocument.from_json(document)
    if doc.nonce != expected_nonce:
        raise VerificationError(Reason.NONCE_MISMATCH, "the report answers another nonce")
    stamp = int(now.timestamp())
    if doc.expires_at <= stamp:
        raise VerificationError(Reason.EXPIRED, "the attested keys have expired")
    if stamp - doc.generated_at > policy.max_age_seconds:
        raise VerificationError(Reason.EXPIRED, "the report is older than the policy allows")
    if doc.platform.startswith("simulated") and not roots.simulated_allowed:
        raise VerificationError(Reason.UNTRUSTED_ROOT, "simulated evidence is not trusted")
    digest = binding.keys_digest(doc.keys)
    gpus = _verify_gpus(doc, binding.gpu_nonce(doc.nonce, digest), roots, policy, now)
    want = binding.report_data(digest_of_keys=digest, nonce=doc.nonce,
                               digest_of_gpus=binding.gpu_evidence_digest(doc.gpus),
                               expiry=doc.expires_at)
    if doc.platform in ("sev-snp", "simulated-sev-snp"):
        claims = _verify_snp(doc, roots, policy, now)
        got = claims[0]
    elif doc.platform in ("tdx", "simulated-tdx"):
        claims = _verify_tdx(doc, roots, policy, now)
        got = claims[0]
    else:
        raise VerificationError(Reason.UNSUPPORTED, f"platform {doc.platform!r}")
    if got != want:
        raise VerificationError(Reason.BINDING_MISMATCH,
                                "the report does not bind these keys, nonce and GPUs")
    _, measurement, tcb, debug = claims
    return VerifiedEvidence(doc.platform, measurement, tcb, debug, gpus, doc.keys, doc.expires_at)


def _verify_snp(doc: EvidenceDocument, roots: TrustRoots, policy: Policy, now: dt.datetime
                ) -> tuple[bytes, str, str, bool]:
    table = parse_cert_table(doc.aux)
    try:
        vcek, ask, ark = (table[VCEK_GUID], table[ASK_GUID], table[ARK_GUID])
    except KeyError:
        raise VerificationError(Reason.MALFORMED, "VCEK, ASK or ARK missing") from None
    report = snp.verify_snp_report(doc.report, vcek=_cert(vcek), ask=_cert(ask), ark=_cert(ark),
                                   trusted_arks=roots.amd, now=now)
    check_snp_policy(report, policy)
    t = report.reported_tcb
    tcb = f"bl={t.boot_loader} tee={t.tee} snp={t.snp} ucode={t.microcode}"
    return report.report_data, report.measurement.hex(), tcb, report.debug_allowed


def check_snp_policy(report: snp.SnpReport, policy: Policy) -> None:
    """Debug forbidden unless the policy relaxes it; measurement and TCB as configured."""
    if report.debug_allowed and not policy.allow_debug:
        raise VerificationError(Reason.DEBUG, "the guest policy allows debugging")
    if policy.measurements and report.measurement.hex() not in policy.measurements:
        raise VerificationError(Reason.POLICY, "measurement not in the policy's allow-list")
    if policy.min_tcb is not None and not report.reported_tcb.at_least(policy.min_tcb):
        raise VerificationError(Reason.POLICY, "TCB below the policy's minimum")


def _verify_tdx(doc: EvidenceDocument, roots: TrustRoots, policy: Policy, now: dt.datetime
                ) -> tuple[bytes, str, str, bool]:
    quote = tdx.verify_tdx_quote(doc.report, trusted_roots=roots.intel, now=now)
    td = quote.td
    if td.debug and not policy.allow_debug:
        raise VerificationError(Reason.DEBUG, "the TD is debuggable")
    if policy.mrtd and td.mr_td.hex() not in policy.mrtd:
        raise VerificationError(Reason.POLICY, "MRTD not in the policy's allow-list")
    for index, value in policy.rtmrs.items():
        if td.rtmrs[index].hex() != value:
            raise VerificationError(Reason.POLICY, f"RTMR{index} differs from the policy")
    return td.report_data, td.mr_td.hex(), td.tee_tcb_svn.hex(), td.debug


def _verify_gpus(doc: EvidenceDocument, nonce: bytes, roots: TrustRoots, policy: Policy,
                 now: dt.datetime) -> tuple[GpuClaims, ...]:
    if policy.require_gpu and not doc.gpus:
        raise VerificationError(Reason.POLICY, "the policy requires GPU evidence")
    out = []
    for report_bytes, chain in doc.gpus:
        report = gpu.verify_gpu_report(report_bytes, chain, expected_nonce=nonce,
                                       trusted_roots=roots.nvidia, now=now)
        if policy.gpu_vbios and report.vbios_version not in policy.gpu_vbios:
            raise VerificationError(Reason.POLICY, "GPU VBIOS not in the policy's allow-list")
        out.append(GpuClaims(report.driver_version, report.vbios_version))
    return tuple(out)


def _cert(der: bytes) -> x509.Certificate:
    return load_der(der)


def new_nonce() -> bytes:
    return os.urandom(binding.NONCE_SIZE)
