"""Fleet secrets: every secret a gateway replica needs, derived from one root seed that
the keyholder releases only to attested replicas (`gateway.keyholder`), so every replica
of a fleet holds the same keys and can answer any client of any other.

    per epoch (wall-clock aligned: epoch = floor(unix time / rotation period))
        hpke-x25519 {epoch}       the OHTTP / EHBP / Continuum / Atoma X25519 key
    per seed
        atoma-signing-ed25519     Atoma's response signing key
        continuum-mlkem768        Continuum's hybrid key (ML-KEM seed, X25519)
        continuum-x25519
        data-key                  what seals the platform's stored state
        cache-salt                the prefix-cache salt secret
        tls-p256                  the attested TLS key (one certificate for the fleet)
All are HKDF-SHA256 expansions of the seed with distinct labels, so one cannot be
computed from another. Sans-IO.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

SEED_SIZE = 32
LABEL = b"cloister-fleet-v1 "


class FleetSecrets:
    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"a fleet seed is {SEED_SIZE} bytes")
        self._seed = seed

    def __repr__(self) -> str:
        return "FleetSecrets([redacted])"

    def derive(self, label: str, size: int = 32) -> bytes:
        return HKDFExpand(hashes.SHA256(), size, LABEL + label.encode()).derive(self._seed)

    def hpke_key(self, epoch: int) -> bytes:
        return self.derive(f"hpke-x25519 {epoch}")
