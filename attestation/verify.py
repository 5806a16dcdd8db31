"""Verify an evidence document: hardware signatures, the binding, the workload,
freshness, the policy.

The result is the set of claims a client may rely on: platform, measurement, TCB, GPUs,
the workload (its manifest and digest, whether it was pinned at launch), the public keys
the hardware vouches for, and until when. The platform is decided by the report's
structure and by which pinned root verified it (a simulated root makes it
`simulated-...`), never by the document's label.
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
from attestation.workload import WorkloadClaims, check_launch_pin, workload_digest
from attestation.x509chain import fingerprint, load_der, load_pem_chain


@dataclass(frozen=True)
class TrustRoots:
    amd: frozenset[str] = PRODUCTION_AMD_ARKS
    intel: frozenset[str] = PRODUCTION_INTEL_ROOTS
    nvidia: frozenset[str] = PRODUCTION_NVIDIA_ROOTS
    simulated: frozenset[str] = frozenset()  # fingerprints of trusted simulated roots

    def with_simulated(self, roots_pem: bytes) -> TrustRoots:
        """Also trust a simulated test PKI, named explicitly by its root certificates."""
        prints = frozenset(fingerprint(c) for c in load_pem_chain(roots_pem))
        return TrustRoots(self.amd | prints, self.intel | prints, self.nvidia | prints,
                          self.simulated | prints)


@dataclass(frozen=True)
class Policy:
    """What to accept. Empty allow-lists accept any value; debug is forbidden and launch
    pinning required by default."""

    measurements: frozenset[str] = frozenset()   # SNP MEASUREMENT, hex
    mrtd: frozenset[str] = frozenset()           # TDX MRTD, hex
    rtmrs: dict[int, str] = field(default_factory=dict)  # TDX RTMR index -> hex
    allow_debug: bool = False
    min_tcb: snp.TcbVersion | None = None
    gpu_vbios: frozenset[str] = frozenset()
    require_gpu: bool = False
    max_age_seconds: int = 300
    require_launch_pinning: bool = True
    workload_digests: frozenset[str] = frozenset()  # hex
    model_digests: dict[str, frozenset[str]] = field(default_factory=dict)  # name -> digests

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
            require_launch_pinning=bool(raw.get("require_launch_pinning", True)),
            workload_digests=frozenset(d.lower() for d in raw.get("workload_digests", [])),
            model_digests={str(name): frozenset(str(d) for d in digests)
                           for name, digests in raw.get("model_digests", {}).items()},
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
    workload: WorkloadClaims
    generated_at: int
    expires_at: int


@dataclass(frozen=True)
class _Hardware:
    """What a CPU verifier establishes."""

    platform: str
    report_data: bytes
    launch_field: bytes
    measurement: str
    tcb: str
    debug: bool


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
    hardware = _verify_cpu(doc, roots, policy, now)
    if doc.platform != hardware.platform:
        raise VerificationError(Reason.POLICY, f"the document says {doc.platform!r}, the "
                                f"evidence is {hardware.platform!r}")
    keys_digest = binding.keys_digest(doc.keys)
    gpus = _verify_gpus(doc, binding.gpu_nonce(doc.nonce, keys_digest), roots, policy, now)
    digest = workload_digest(doc.workload)
    if digest != doc.workload_digest:
        raise VerificationError(Reason.WORKLOAD_MISMATCH,
                                "the workload manifest does not hash to its digest")
    want = binding.report_data(digest_of_keys=keys_digest, nonce=doc.nonce,
                               digest_of_gpus=binding.gpu_evidence_digest(doc.gpus),
                               digest_of_workload=digest, generated_at=doc.generated_at,
                               expiry=doc.expires_at)
    if hardware.report_data != want:
        raise VerificationError(Reason.BINDING_MISMATCH, "the report does not bind these "
                                "keys, nonce, GPUs, workload and time window")
    pinned = check_launch_pin(hardware.platform, hardware.launch_field, digest,
                              init_data=doc.init_data)
    workload = WorkloadClaims.parse(doc.workload, pinned_at_launch=pinned)
    check_workload_policy(workload, policy)
    return VerifiedEvidence(hardware.platform, hardware.measurement, hardware.tcb,
                            hardware.debug, gpus, doc.keys, workload, doc.generated_at,
                            doc.expires_at)


def check_workload_policy(workload: WorkloadClaims, policy: Policy) -> None:
    if policy.require_launch_pinning and not workload.pinned_at_launch:
        raise VerificationError(Reason.NOT_PINNED, "the workload was not pinned at launch "
                                "(HOST_DATA / MRCONFIGID is empty)")
    if policy.workload_digests and workload.digest not in policy.workload_digests:
        raise VerificationError(Reason.WORKLOAD_NOT_ALLOWED,
                                f"workload {workload.digest} is not an accepted one")
    for model in workload.models:
        accepted = policy.model_digests.get(model.name)
        if accepted is not None and model.digest not in accepted:
            raise VerificationError(Reason.MODEL_NOT_ALLOWED,
                                    f"model {model.name!r} has digest {model.digest}, "
                                    "which the policy does not accept")


def _verify_cpu(doc: EvidenceDocument, roots: TrustRoots, policy: Policy, now: dt.datetime
                ) -> _Hardware:
    """SNP or TDX, decided by the report's structure; verified to a pinned root."""
    if len(doc.report) == snp.REPORT_SIZE and doc.aux:
        return _verify_snp(doc, roots, policy, now)
    if tdx.looks_like_quote(doc.report):
        return _verify_tdx(doc, roots, policy, now)
    raise VerificationError(Reason.UNSUPPORTED, "neither an SNP report nor a TDX quote")


def _named(base: str, root: str, roots: TrustRoots) -> str:
    return f"simulated-{base}" if root in roots.simulated else base


def _verify_snp(doc: EvidenceDocument, roots: TrustRoots, policy: Policy, now: dt.datetime
                ) -> _Hardware:
    table = parse_cert_table(doc.aux)
    try:
        vcek, ask, ark = (table[VCEK_GUID], table[ASK_GUID], table[ARK_GUID])
    except KeyError:
        raise VerificationError(Reason.MALFORMED, "VCEK, ASK or ARK missing") from None
    ark_cert = _cert(ark)
    report = snp.verify_snp_report(doc.report, vcek=_cert(vcek), ask=_cert(ask),
                                   ark=ark_cert, trusted_arks=roots.amd, now=now)
    check_snp_policy(report, policy)
    t = report.reported_tcb
    return _Hardware(_named("sev-snp", fingerprint(ark_cert), roots), report.report_data,
                     report.host_data, report.measurement.hex(),
                     f"bl={t.boot_loader} tee={t.tee} snp={t.snp} ucode={t.microcode}",
                     report.debug_allowed)


def check_snp_policy(report: snp.SnpReport, policy: Policy) -> None:
    """Debug forbidden unless the policy relaxes it; measurement and TCB as configured."""
    if report.debug_allowed and not policy.allow_debug:
        raise VerificationError(Reason.DEBUG, "the guest policy allows debugging")
    if policy.measurements and report.measurement.hex() not in policy.measurements:
        raise VerificationError(Reason.POLICY, "measurement not in the policy's allow-list")
    if policy.min_tcb is not None and not report.reported_tcb.at_least(policy.min_tcb):
        raise VerificationError(Reason.POLICY, "TCB below the policy's minimum")


def _verify_tdx(doc: EvidenceDocument, roots: TrustRoots, policy: Policy, now: dt.datetime
                ) -> _Hardware:
    quote = tdx.verify_tdx_quote(doc.report, trusted_roots=roots.intel, now=now)
    root = load_pem_chain(quote.pck_chain_pem)[-1]
    td = quote.td
    check_tdx_policy(td, policy)
    return _Hardware(_named("tdx", fingerprint(root), roots), td.report_data, td.mr_config_id,
                     td.mr_td.hex(), td.tee_tcb_svn.hex(), td.debug)


def check_tdx_policy(td: tdx.TdReport, policy: Policy) -> None:
    if td.debug and not policy.allow_debug:
        raise VerificationError(Reason.DEBUG, "the TD is debuggable")
    if policy.mrtd and td.mr_td.hex() not in policy.mrtd:
        raise VerificationError(Reason.POLICY, "MRTD not in the policy's allow-list")
    for index, value in policy.rtmrs.items():
        if td.rtmrs[index].hex() != value:
            raise VerificationError(Reason.POLICY, f"RTMR{index} differs from the policy")


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
