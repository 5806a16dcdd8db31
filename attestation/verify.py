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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation import binding, platforms
from attestation.acceptance import Evidence, accept
from attestation.challenge import CHALLENGE_KEY, ChallengeAnswer
from attestation.errors import Reason, VerificationError
from attestation.evidence import EvidenceDocument
from attestation.platform import SIMULATED_PREFIX, GpuClaims, Hardware
from attestation.platforms import production_roots
from attestation.reference import ReferenceValues
from attestation.workload import (
    WorkloadClaims,
    check_launch_pin,
    pinned_init_data,
    workload_digest,
)
from attestation.x509chain import fingerprint, load_pem_chain

__all__ = ["GpuClaims", "Policy", "TrustRoots", "VerifiedEvidence", "new_nonce",
           "verify_challenge_answer", "verify_evidence"]


@dataclass(frozen=True)
class TrustRoots:
    """Pinned root fingerprints per vendor ("amd", "intel", "nvidia": the registered
    platforms' production roots by default)."""

    vendors: Mapping[str, frozenset[str]] = field(default_factory=production_roots)
    simulated: frozenset[str] = frozenset()  # fingerprints of trusted simulated roots

    def of(self, vendor: str) -> frozenset[str]:
        return self.vendors.get(vendor, frozenset())

    def with_simulated(self, roots_pem: bytes) -> TrustRoots:
        """Also trust a simulated test PKI, named explicitly by its root certificates."""
        prints = frozenset(fingerprint(c) for c in load_pem_chain(roots_pem))
        vendors = {v: self.of(v) | prints for v in {*self.vendors, *production_roots()}}
        return TrustRoots(vendors, self.simulated | prints)


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
    report: Any = None  # the platform's parsed report (`SnpReport`, `TdReport`)
    accepted: ReferenceValues | None = None  # the reference values that matched
    tcb_status: str | None = None  # the vendor's verdict on the TCB, where it gives one
    advisory_ids: tuple[str, ...] = ()
    collateral_checked: str = ""  # for people: what the vendor's collateral said
    revocation_checked: bool = True  # False only where the policy waived AMD's CRL


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
    gpus = _verify_gpus(doc, binding.gpu_nonce(doc.nonce, keys_digest), roots, now,
                        check_revocation=policy.check_revocation)
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
    launched = pinned_init_data(hardware.platform, hardware.launch_field, doc.init_data)
    evidence = Evidence(hardware, gpus, workload, launched.digest if launched else None)
    accepted = accept(evidence, policy.values, any_measurement=policy.accept_any_measurement)
    return VerifiedEvidence(hardware.platform, hardware.measurement, hardware.tcb,
                            hardware.debug, gpus, doc.keys, workload, doc.generated_at,
                            doc.expires_at, hardware.report, accepted, hardware.tcb_status,
                            hardware.advisory_ids, hardware.collateral_checked,
                            hardware.revocation_checked)


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
                ) -> Hardware:
    """The platform decided by the report's structure; verified to a pinned root, with
    the vendor's collateral (revocation, TCB status). A simulated root makes the
    platform `simulated-...`."""
    for platform in platforms.CPU_PLATFORMS:
        if platform.recognises(doc.report, doc.aux):
            hardware = platform.verify(doc.report, doc.aux, doc.collateral,
                                       roots=roots.of(platform.vendor), now=now,
                                       check_revocation=policy.check_revocation)
            if hardware.root in roots.simulated:
                return dataclasses.replace(hardware,
                                           platform=SIMULATED_PREFIX + hardware.platform)
            return hardware
    names = ", ".join(p.name for p in platforms.CPU_PLATFORMS)
    raise VerificationError(Reason.UNSUPPORTED, f"the report is none of {names}")


def _verify_gpus(doc: EvidenceDocument, nonce: bytes, roots: TrustRoots, now: dt.datetime,
                 *, check_revocation: bool) -> tuple[GpuClaims, ...]:
    out = []
    for report, chain in doc.gpus:
        architecture = next((a for a in platforms.GPU_ARCHITECTURES if a.recognises(report)),
                            None)
        if architecture is None:
            raise VerificationError(Reason.UNSUPPORTED, "a GPU report of no known architecture")
        out.append(architecture.verify(report, chain, expected_nonce=nonce,
                                       roots=roots.of(architecture.vendor), now=now,
                                       ocsp=doc.collateral.gpu_ocsp,
                                       check_revocation=check_revocation))
    return tuple(out)


def new_nonce() -> bytes:
    return os.urandom(binding.NONCE_SIZE)
