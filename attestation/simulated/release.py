"""The simulated TEE's release: a release key made on this machine and a signed statement
covering the default demo workload, so that `make serve` and a default `cloister proxy
--simulated-roots ...` work out of the box, and a gateway started with other settings is
refused until its operator signs values for it.

The key lives next to the simulated PKI in the state folder (0600); its public key is
written into `simulated-roots.pem`, so clients trust it only when they name that file.
The statement is signed once and served again on every start; its version goes up when
the default workload's digest changes (a new build) or when it has less than half of its
seven days left, as a real release line's would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from attestation.reference import GpuValues, ReferenceValues
from attestation.simulated import pki as simulated
from attestation.simulated import twins
from attestation.statement import PrivateKey, generate_key, load_private_key, private_pem
from attestation.statement import sign_statement as sign

KEY_FILE = "simulated-release-key.pem"
STATE_FILE = "simulated-release.json"
STATEMENT_FILE = "simulated-release-statement.json"
VALIDITY = dt.timedelta(days=7)


def release_key(folder: Path) -> PrivateKey:
    """The simulated release key kept in `folder` (0600), made on first use."""
    path = folder / KEY_FILE
    if path.exists():
        return load_private_key(path.read_bytes())
    key = generate_key()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem(key))
    return key


def reference_values(workload_digest: str, *, version: int, now: dt.datetime
                     ) -> ReferenceValues:
    """What the simulated TEE's evidence shows for the default workload."""
    driver = simulated.SIMULATED_DRIVER_VERSION.rstrip(b"\x00").decode()
    return ReferenceValues(
        platforms={twin.name: twin.values() for twin in twins.TWINS},
        gpu=GpuValues(required=False, drivers=frozenset({driver}),
                      vbios=frozenset({simulated.SIMULATED_VBIOS_VERSION})),
        workloads=frozenset({workload_digest}), version=version,
        valid_until=now + VALIDITY)


def statement(folder: Path, workload_digest: str, *, now: dt.datetime) -> bytes:
    """The signed statement for the default workload, kept in `folder`: the one signed
    before while its workload is the same and it has more than half its life left (a
    client refuses other contents under a version it accepted), else a new version."""
    path, signed = folder / STATE_FILE, folder / STATEMENT_FILE
    state: dict[str, Any] = (json.loads(path.read_text()) if path.exists()
                             else {"version": 0, "workload": ""})
    renew_after = dt.datetime.fromisoformat(state.get("renew_after", "1970-01-01T00:00:00+00:00"))
    if state["workload"] == workload_digest and now < renew_after and signed.exists():
        return signed.read_bytes()
    version = int(state["version"]) + 1
    values = reference_values(workload_digest, version=version, now=now)
    envelope = sign(values, release_key(folder))
    signed.write_bytes(envelope)
    path.write_text(json.dumps({"version": version, "workload": workload_digest,
                                "renew_after": (now + VALIDITY / 2).isoformat()}))
    return envelope


def sign_for(folder: Path, workload_digest: str, *, now: dt.datetime) -> tuple[bytes, int]:
    """A statement, signed with the simulated release key, for a workload of any
    settings (`cloister release sign --simulated`); with its version. One version line
    for the key: the next version of the default statement's, which is signed again at
    the next start with a higher one (a client refuses a version below one it took)."""
    path = folder / STATE_FILE
    state: dict[str, Any] = (json.loads(path.read_text()) if path.exists()
                             else {"version": 0, "workload": ""})
    version = int(state["version"]) + 1
    envelope = sign(reference_values(workload_digest, version=version, now=now),
                    release_key(folder))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps({**state, "version": version,
                                "renew_after": "1970-01-01T00:00:00+00:00"}))
    return envelope, version
