"""Verify an evidence document: hardware signatures, the binding, the workload,
freshness, and acceptance against reference values.

The result is the set of claims a client may rely on: platform, measurement, TCB, GPUs,
the workload (its manifest and digest, whether it was pinned at launch), the public keys
the hardware vouches for, until when, and which reference values accepted it. The
platform is decided by the report's structure and by which pinned root verified it (a
simulated root makes it `simulated-...`), never by the document's label.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from attestation import amd_crl, binding, dcap, gpu, snp, tdx
from attestation.acceptance import Evidence, GpuClaims, accept
from attestation.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, parse_cert_table
from attestation.challenge import CHALLENGE_KEY, ChallengeAnswer
from attestation.errors import Reason, VerificationError
from attestation.evidence import EvidenceDocument
from attestation.reference import ReferenceValues
from attestation.roots import PRODUCTION_AMD_ARKS, PRODUCTION_INTEL_ROOTS, PRODUCTION_NVIDIA_ROOTS
from attestation.snp import SnpReport
from attestation.tdx import TdReport
from attestation.workload import WorkloadClaims, check_launch_pin, workload_digest
from attestation.x509chain import fingerprint, load_der, load_pem_chain

__all__ = ["GpuClaims", "Policy", "TrustRoots", "VerifiedEvidence", "new_nonce",
           "verify_challenge_answer", "verify_evidence"]


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


# The longest a report may vouch for keys: a day of key epoch plus an hour of grace.
MAX_KEY_LIFETIME = 25 * 3600


@dataclass(frozen=True)
class Policy:
    """What a client accepts: any of its reference values (a signed statement's or a
    local file's), a report no older than `max_age_seconds`, keys attested for at most
    `max_key_lifetime_seconds`, and a workload pinned at launch. With no reference
    values every evidence is refused, unless `accept_any_measurement` (development only)
    is set. `check_revocation` off skips AMD's CRL, for old real reports whose CRL
    nobody kept; TDX always needs its collateral (the TCB status comes from it)."""

    values: tuple[ReferenceValues, ...] = ()
    max_age_seconds: int = 300
    require_launch_pinning: bool = True
    accept_any_measurement: bool = False
    max_key_lifetime_seconds: int = MAX_KEY_LIFETIME
    check_revocation: bool = True

    @classmethod
    def load(cls, path: Path) -> Policy:
        """A policy file: reference values (`attestation.reference`) plus the client's
        own limits; `ValueError` if malformed."""
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return cls((ReferenceValues.parse(raw),),
                   max_age_seconds=int(raw.get("max_age_seconds", 300)),
                   require_launch_pinning=bool(raw.get("require_launch_pinning", True)),
                   accept_any_measurement=bool(raw.get("accept_any_measurement", False)),
                   max_key_lifetime_seconds=int(raw.get("max_key_lifetime_seconds",
                                                        MAX_KEY_LIFETIME)),
                   check_revocation=bool(raw.get("check_revocation", True)))

    def with_values(self, values: tuple[ReferenceValues, ...]) -> Policy:
        return dataclasses.replace(self, values=values)


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
    snp: SnpReport | None = None
    tdx: TdReport | None = None
    accepted: ReferenceValues | None = None  # the reference values that matched
    tcb_status: str | None = None  # TDX: Intel's verdict on the platform's TCB
    advisory_ids: tuple[str, ...] = ()
    revocation_checked: bool = True  # False only where the policy waived AMD's CRL


@dataclass(frozen=True)
class _Hardware:
    """What a CPU verifier establishes."""

    platform: str
    report_data: bytes
    launch_field: bytes
    measurement: str
    tcb: str
    debug: bool
    snp: SnpReport | None = None
    tdx: TdReport | None = None
    tcb_verdict: dcap.TcbVerdict | None = None


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
    if doc.expires_at - doc.generated_at > policy.max_key_lifetime_seconds:
        raise VerificationError(Reason.EXPIRY_TOO_LONG, "the report vouches for its keys "
                                "longer than the policy allows")
    hardware = _verify_cpu(doc, roots, now, policy)
    if doc.platform != hardware.platform:
        raise VerificationError(Reason.POLICY, f"the document says {doc.platform!r}, the "
                                f"evidence is {hardware.platform!r}")
    keys_digest = binding.keys_digest(doc.keys)
    gpus = _verify_gpus(doc, binding.gpu_nonce(doc.nonce, keys_digest), roots, now)
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
    if policy.require_launch_pinning and not pinned:
        raise VerificationError(Reason.NOT_PINNED, "the workload was not pinned at launch "
                                "(HOST_DATA / MRCONFIGID is empty)")
    if workload.uses_gpu and not gpus:
        raise VerificationError(Reason.GPU_MISSING, "the engine runs on a GPU, and the "
                                "evidence has no GPU report")
    verdict = hardware.tcb_verdict
    status = verdict.status if verdict else None
    evidence = Evidence(hardware.platform, hardware.snp, hardware.tdx, status, gpus, workload)
    accepted = accept(evidence, policy.values, any_measurement=policy.accept_any_measurement)
    return VerifiedEvidence(hardware.platform, hardware.measurement, hardware.tcb,
                            hardware.debug, gpus, doc.keys, workload, doc.generated_at,
                            doc.expires_at, hardware.snp, hardware.tdx, accepted, status,
                            verdict.advisory_ids if verdict else (),
                            verdict is not None or policy.check_revocation)


def verify_challenge_answer(body: bytes, *, challenge: bytes, roots: TrustRoots,
                            policy: Policy, now: dt.datetime) -> VerifiedEvidence:
    """A cached per-epoch report with the attested key's signature over `challenge`
    (`attestation.challenge`): the report may be as old as its keys' lifetime, the
    signature must be as fresh as `policy.max_age_seconds`."""
    answer = ChallengeAnswer.parse(body)
    if abs(int(now.timestamp()) - answer.signed_at) > policy.max_age_seconds:
        raise VerificationError(Reason.EXPIRED, "the challenge answer is not fresh")
    keys = EvidenceDocument.from_json(answer.document).keys
    cached = dataclasses.replace(policy, max_age_seconds=policy.max_key_lifetime_seconds)
    claims = verify_evidence(answer.document, expected_nonce=binding.keys_digest(keys),
                             roots=roots, policy=cached, now=now)
    public = claims.keys.get(CHALLENGE_KEY)
    if public is None:
        raise VerificationError(Reason.NONCE_SIGNATURE, "the report attests no challenge key")
    answer.check(challenge, public)
    return claims


def _verify_cpu(doc: EvidenceDocument, roots: TrustRoots, now: dt.datetime, policy: Policy
                ) -> _Hardware:
    """SNP or TDX, decided by the report's structure; verified to a pinned root, with the
    vendor's collateral (revocation, TCB status)."""
    if len(doc.report) == snp.REPORT_SIZE and doc.aux:
        return _verify_snp(doc, roots, now, check_revocation=policy.check_revocation)
    if tdx.looks_like_quote(doc.report):
        return _verify_tdx(doc, roots, now)
    raise VerificationError(Reason.UNSUPPORTED, "neither an SNP report nor a TDX quote")


def _named(base: str, root: str, roots: TrustRoots) -> str:
    return f"simulated-{base}" if root in roots.simulated else base


def _verify_snp(doc: EvidenceDocument, roots: TrustRoots, now: dt.datetime, *,
                check_revocation: bool) -> _Hardware:
    table = parse_cert_table(doc.aux)
    try:
        vcek, ask, ark = (_cert(table[VCEK_GUID]), _cert(table[ASK_GUID]), _cert(table[ARK_GUID]))
    except KeyError:
        raise VerificationError(Reason.MALFORMED, "VCEK, ASK or ARK missing") from None
    report = snp.verify_snp_report(doc.report, vcek=vcek, ask=ask, ark=ark,
                                   trusted_arks=roots.amd, now=now)
    if check_revocation:
        if doc.collateral.amd_crl is None:
            raise VerificationError(Reason.COLLATERAL_MISSING, "the evidence carries no AMD CRL")
        amd_crl.check_not_revoked(doc.collateral.amd_crl, ark=ark, ask=ask, vcek=vcek, now=now)
    ark_cert = ark
    t = report.reported_tcb
    return _Hardware(_named("sev-snp", fingerprint(ark_cert), roots), report.report_data,
                     report.host_data, report.measurement.hex(),
                     f"bl={t.boot_loader} tee={t.tee} snp={t.snp} ucode={t.microcode}",
                     report.debug_allowed, snp=report)


def _verify_tdx(doc: EvidenceDocument, roots: TrustRoots, now: dt.datetime) -> _Hardware:
    quote = tdx.verify_tdx_quote(doc.report, trusted_roots=roots.intel, now=now)
    chain = load_pem_chain(quote.pck_chain_pem)
    if doc.collateral.tdx is None:
        raise VerificationError(Reason.COLLATERAL_MISSING, "the evidence carries no Intel "
                                "collateral (TCB info, QE identity, CRLs)")
    verdict = dcap.evaluate(doc.report, doc.collateral.tdx, pck_chain=chain, now=now)
    td = quote.td
    return _Hardware(_named("tdx", fingerprint(chain[-1]), roots), td.report_data,
                     td.mr_config_id, td.mr_td.hex(), f"{td.tee_tcb_svn.hex()} {verdict.status}",
                     td.debug, tdx=td, tcb_verdict=verdict)


def _verify_gpus(doc: EvidenceDocument, nonce: bytes, roots: TrustRoots, now: dt.datetime
                 ) -> tuple[GpuClaims, ...]:
    out = []
    for report_bytes, chain in doc.gpus:
        report = gpu.verify_gpu_report(report_bytes, chain, expected_nonce=nonce,
                                       trusted_roots=roots.nvidia, now=now)
        out.append(GpuClaims(report.driver_version, report.vbios_version, report.mode,
                             {i: v.hex() for i, v in report.measurements.items()}))
    return tuple(out)


def _cert(der: bytes) -> x509.Certificate:
    return load_der(der)


def new_nonce() -> bytes:
    return os.urandom(binding.NONCE_SIZE)
