"""What a client trusts, and what it remembers of the statements it accepted.

A gateway is trusted when its report verifies to pinned hardware roots (`TrustRoots`)
and its claims match either a local policy file (`--policy`) or a release statement
signed by a trusted release key: `--release-key PUB` (repeatable), the keys shipped in
this package (`attestation/data/release-keys.pem`, empty until the project publishes
releases), and, only with `--simulated-roots`, the simulated TEE's release key (its
public key travels in the same file as the simulated roots).

`StatementLog` keeps, in the client's state folder, every statement digest it accepted
(an append-only log, `accepted-statements.log`) and the highest version accepted per
gateway (`statement-versions.json`): a lower version is a rollback and is refused, and a
statement never seen before is announced.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from attestation.errors import Reason, VerificationError
from attestation.statement import PublicKey, VerifiedStatement, load_public_keys
from attestation.verify import Policy, TrustRoots

SHIPPED_KEYS = "release-keys.pem"


def shipped_release_keys() -> dict[str, PublicKey]:
    pem = resources.files("attestation").joinpath("data", SHIPPED_KEYS).read_bytes()
    return load_public_keys(pem)


@dataclass(frozen=True)
class SigstoreIdentity:
    """Accept statements signed through Sigstore by this identity (offline check)."""

    identity: str
    issuer: str
    trusted_root: Path | None = None


@dataclass(frozen=True)
class Trust:
    roots: TrustRoots = field(default_factory=TrustRoots)
    release_keys: dict[str, PublicKey] = field(default_factory=dict)
    policy: Policy | None = None
    sigstore: SigstoreIdentity | None = None

    @property
    def has_reference_values(self) -> bool:
        """Whether anything could ever say which measurement and workload is right."""
        return self.policy is not None or bool(self.release_keys) or self.sigstore is not None


def load_trust(*, release_keys: list[Path], policy: Path | None,
               simulated_roots: Path | None, sigstore: SigstoreIdentity | None = None
               ) -> Trust:
    """The trust of `cloister proxy` / `cloister attest` from their flags."""
    roots = TrustRoots()
    keys = dict(shipped_release_keys())
    for path in release_keys:
        keys.update(load_public_keys(path.read_bytes()))
    if simulated_roots is not None:
        pem = simulated_roots.read_bytes()
        roots = roots.with_simulated(pem)
        keys.update(load_public_keys(pem))
    return Trust(roots, keys, Policy.load(policy) if policy is not None else None, sigstore)


def default_state_dir() -> Path:
    base = os.environ.get("CLOISTER_STATE") or os.path.expanduser("~/.local/state/cloister")
    return Path(base) / "client"


class StatementLog:
    """The statements this client accepted, per gateway (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._log = folder / "accepted-statements.log"
        self._versions = folder / "statement-versions.json"

    def _load_versions(self) -> dict[str, int]:
        try:
            raw = json.loads(self._versions.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): int(v) for k, v in raw.items()}

    def check_rollback(self, gateway: str, statement: VerifiedStatement) -> None:
        highest = self._load_versions().get(gateway, 0)
        if statement.values.version < highest:
            raise VerificationError(Reason.STATEMENT_ROLLBACK,
                                    f"version {statement.values.version} after version "
                                    f"{highest} was accepted")

    def seen(self, digest: str) -> bool:
        try:
            return any(line.split()[2] == digest for line in
                       self._log.read_text().splitlines() if len(line.split()) > 2)
        except FileNotFoundError:
            return False

    def record(self, gateway: str, statement: VerifiedStatement) -> bool:
        """Remember `statement` as accepted for `gateway`; True if it is new here. Safe
        with other clients (threads, processes) recording in the same folder at once."""
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self._folder / "statements.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            versions = self._load_versions()
            versions[gateway] = max(versions.get(gateway, 0), statement.values.version)
            with tempfile.NamedTemporaryFile("w", dir=self._folder, delete=False) as tmp:
                tmp.write(json.dumps(versions, indent=2, sort_keys=True))
            os.replace(tmp.name, self._versions)
            if self.seen(statement.digest):
                return False
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            with self._log.open("a") as log:
                log.write(f"{stamp} {gateway} {statement.digest} v{statement.values.version} "
                          f"{statement.key_id}\n")
        return True
