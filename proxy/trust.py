"""What a client trusts, and what it remembers of the statements it accepted.

A gateway is trusted when its report verifies to pinned hardware roots (`TrustRoots`)
and its claims match either a local policy file (`--policy`) or a release statement
signed by a trusted release key: `--release-key PUB` (repeatable), the keys shipped in
this package (`attestation/data/release-keys.pem`, empty until the project publishes
releases), and, only with `--simulated-roots`, the simulated TEE's release key (its
public key travels in the same file as the simulated roots).

`StatementLog` keeps, in the client's state folder, every statement digest it accepted
(an append-only log, `accepted-statements.log`) and, per release key (a Sigstore
identity counts as one), the highest version accepted and that statement's digest
(`release-key-versions.json`). A lower version is a rollback, the same version with other
contents is an equivocation, both refused whatever URL the gateway was reached by; a
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
from typing import Any

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
    """The statements this client accepted, per release key (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._log = folder / "accepted-statements.log"
        self._versions = folder / "release-key-versions.json"

    def versions(self) -> dict[str, dict[str, Any]]:
        """Per release key (or Sigstore identity): the highest version accepted and its
        statement's digest."""
        try:
            raw = json.loads(self._versions.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): {"version": int(v["version"]), "digest": str(v["digest"])}
                for k, v in raw.items()}

    def check(self, statement: VerifiedStatement) -> None:
        """`STATEMENT_ROLLBACK` below the highest version this signer's statements
        reached here; `STATEMENT_EQUIVOCATION` for other contents under that version."""
        highest = self.versions().get(statement.key_id)
        if highest is None:
            return
        version = statement.values.version
        if version < highest["version"]:
            raise VerificationError(Reason.STATEMENT_ROLLBACK,
                                    f"version {version} after version "
                                    f"{highest['version']} was accepted")
        if version == highest["version"] and statement.digest != highest["digest"]:
            raise VerificationError(Reason.STATEMENT_EQUIVOCATION,
                                    f"version {version} was accepted with other contents "
                                    f"(sha256:{highest['digest']})")

    def seen(self, digest: str) -> bool:
        try:
            return any(line.split()[2] == digest for line in
                       self._log.read_text().splitlines() if len(line.split()) > 2)
        except FileNotFoundError:
            return False

    def record(self, gateway: str, statement: VerifiedStatement) -> bool:
        """Remember `statement` as accepted (from `gateway`, for people reading the log);
        True if it is new here. Safe with other clients (threads, processes) recording in
        the same folder at once; `VerificationError` if, since `check`, another client
        accepted what makes this one a rollback or an equivocation."""
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self._folder / "statements.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            self.check(statement)
            versions = self.versions()
            highest = versions.get(statement.key_id)
            if highest is None or statement.values.version > highest["version"]:
                versions[statement.key_id] = {"version": statement.values.version,
                                              "digest": statement.digest}
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
