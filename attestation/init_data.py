"""Confidential Containers init-data: the TOML document whose hash the host puts in the
launch field (SNP HOST_DATA, TDX MRCONFIGID) through the pod annotation
`io.katacontainers.config.hypervisor.cc_init_data`, so the hardware signs what it says.

    version = "0.1.0"
    algorithm = "sha256"          # sha256 (SNP, 32 bytes) or sha384 (TDX, 48 bytes)
    [data]
    "cloister.toml" = 'workload_digest = "<hex>"'   # the workload it runs
    "policy.rego" = '''...'''                        # the Kata agent policy it enforces

The hash is over the document's bytes as written (Kata hashes the annotation's decoded
text): `digest` names it as "<algorithm>:<hex>", the form reference values pin
(`init_data = [...]`).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass

from attestation.errors import Reason, VerificationError

ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
WORKLOAD_ENTRY = "cloister.toml"
POLICY_ENTRY = "policy.rego"


def document(workload_digest: bytes, *, policy: str | None = None,
             algorithm: str = "sha256") -> bytes:
    """The init-data document naming `workload_digest` (and the agent `policy`)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown init-data algorithm {algorithm!r}")
    text = (f'version = "0.1.0"\nalgorithm = "{algorithm}"\n[data]\n'
            f'"{WORKLOAD_ENTRY}" = \'workload_digest = "{workload_digest.hex()}"\'\n')
    if policy is not None:
        if "'''" in policy:
            raise ValueError("an agent policy may not contain '''")
        text += f"\"{POLICY_ENTRY}\" = '''\n{policy}'''\n"
    return text.encode()


@dataclass(frozen=True)
class InitData:
    algorithm: str
    hash: bytes           # of the document's bytes
    workload_digest: str  # hex, what "cloister.toml" names
    policy: str | None

    @property
    def digest(self) -> str:
        return f"{self.algorithm}:{self.hash.hex()}"

    def launch_field(self, size: int) -> bytes:
        """The launch field of a platform whose field holds `size` bytes."""
        return self.hash[:size].ljust(size, b"\x00")

    @classmethod
    def parse(cls, raw: bytes) -> InitData:
        try:
            parsed = tomllib.loads(raw.decode())
            algorithm = str(parsed.get("algorithm", "sha256"))
            hasher = ALGORITHMS[algorithm]
            data = parsed["data"]
            named = tomllib.loads(data[WORKLOAD_ENTRY])["workload_digest"]
            policy = data.get(POLICY_ENTRY)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise VerificationError(Reason.MALFORMED, "malformed init-data document") from None
        return cls(algorithm, hasher(raw).digest(), str(named).lower(),
                   None if policy is None else str(policy))
