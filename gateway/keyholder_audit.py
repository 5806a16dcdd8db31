"""The keyholder's audit log (issue 32): every seed release, and every change of the
release statements in force, appended to a transparency log (`gateway.tlog`: an RFC 9162
tree whose checkpoints the keyholder signs with a key its attestation report binds), so
that the policy in force at any moment can be rebuilt from the log alone (`policy_at`)
and nobody, the operator included, can later say another policy let a replica in.

    policy entry   {"kind": "cloister-keyholder-policy/v1", "time": unix seconds,
                    "statements": [base64 DSSE envelope, ...]}   the statements in force
                    from then on, whole (they are public: reference values, no secrets)
    release entry  {"kind": "cloister-keyholder-release/v1", "time": unix seconds,
                    "workload": digest, "platform": "sev-snp" | ..., "measurement": hex,
                    "policy": hex SHA-256 of the statements' digests in force,
                    "challenge": hex SHA-256 of the single-use challenge}

Each entry is JCS (RFC 8785) JSON. The seed itself is never in the log, nor anything a
replica sent beyond what its verified evidence says about it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import rfc8785

from attestation.statement import VerifiedStatement
from attestation.verify import VerifiedEvidence
from enclave.fleet import FleetSecrets
from gateway.tlog import LogStore, TransparencyLog

POLICY_KIND = "cloister-keyholder-policy/v1"
RELEASE_KIND = "cloister-keyholder-release/v1"


def open_audit(database: str | None, state: Path, seed: bytes,
               envelopes: Iterable[bytes]) -> KeyholderAudit:
    """The audit log in `database` (default SQLite in `state`), signed with a key every
    keyholder of the fleet derives from the seed: keyholders sharing a database keep one
    log (one sequencer at a time, as a fleet's gateways do)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    url = database or f"sqlite:///{state / 'keyholder-audit.db'}"
    key = Ed25519PrivateKey.from_private_bytes(FleetSecrets(seed).derive("keyholder-audit"))
    return KeyholderAudit(TransparencyLog(LogStore(url), key), envelopes)


def policy_digest(statements: Sequence[VerifiedStatement]) -> str:
    return hashlib.sha256(",".join(s.digest for s in statements).encode()).hexdigest()


class KeyholderAudit:
    """What one keyholder appends; `log` signs and serves it."""

    def __init__(self, log: TransparencyLog, envelopes: Iterable[bytes]) -> None:
        self.log = log
        self._envelopes = {hashlib.sha256(_payload(e)).hexdigest(): e for e in envelopes}
        self._in_force: tuple[str, ...] | None = None

    def in_force(self, statements: Sequence[VerifiedStatement], now: float) -> str:
        """Note the statements in force at `now` (a policy entry when they changed since
        the last one); their policy digest."""
        digests = tuple(s.digest for s in statements)
        if digests != self._in_force:
            self.log.append(rfc8785.dumps({
                "kind": POLICY_KIND, "time": int(now),
                "statements": [base64.b64encode(self._envelopes[d]).decode()
                               for d in digests]}))
            self._in_force = digests
        return policy_digest(statements)

    def released(self, claims: VerifiedEvidence, challenge: bytes,
                 statements: Sequence[VerifiedStatement], now: float) -> None:
        policy = self.in_force(statements, now)
        self.log.append(rfc8785.dumps({
            "kind": RELEASE_KIND, "time": int(now), "workload": claims.workload.digest,
            "platform": claims.platform, "measurement": claims.measurement,
            "policy": policy, "challenge": hashlib.sha256(challenge).hexdigest()}))


@dataclass(frozen=True)
class Release:
    time: int
    workload: str
    platform: str
    measurement: str
    policy: str


def read(entries: Iterable[bytes]) -> tuple[list[tuple[int, list[bytes]]], list[Release]]:
    """The policies (time, envelopes) and releases an audit log holds, in log order;
    `ValueError` for an entry that is neither."""
    policies: list[tuple[int, list[bytes]]] = []
    releases: list[Release] = []
    for entry in entries:
        record = json.loads(entry)
        if record.get("kind") == POLICY_KIND:
            policies.append((int(record["time"]),
                             [base64.b64decode(s) for s in record["statements"]]))
        elif record.get("kind") == RELEASE_KIND:
            releases.append(Release(int(record["time"]), record["workload"],
                                    record["platform"], record["measurement"],
                                    record["policy"]))
        else:
            raise ValueError("not a keyholder audit entry")
    return policies, releases


def policy_at(entries: Iterable[bytes], when: float) -> list[bytes]:
    """The statement envelopes in force at `when`, as the log says (the last policy
    entry at or before it); `LookupError` before the first."""
    policies, _ = read(entries)
    chosen = [envelopes for at, envelopes in policies if at <= when]
    if not chosen:
        raise LookupError("the log holds no policy at that time")
    return chosen[-1]


def _payload(envelope: bytes) -> bytes:
    """A DSSE envelope's payload (what a statement's digest is over)."""
    return base64.b64decode(json.loads(envelope)["payload"])
