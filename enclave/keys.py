"""Key custody: the enclave's HPKE X25519 key pairs, one per epoch, rotated with overlap.

Keys are generated inside the gateway process at start and never leave it (DESIGN
section 5); in a fleet (`derive`), each epoch's key comes from the fleet seed instead, and
epochs follow the wall clock (epoch = floor(time / rotation)), so every replica holds the
same key at the same time and honours the next one a little early (clock skew). The
current key serves new requests; after a rotation the previous key is
still accepted for a grace window so that in-flight clients finish, and then forgotten.
A private key never appears in a repr, a log line, an exception or a metric.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pyhpke import KEMKeyInterface

from enclave.ohttp.keyconfig import KeyConfig
from enclave.ohttp.protocol import KEM_X25519_HKDF_SHA256, OFFERED_SUITES
from enclave.ohttp.suites import hpke_suite

# Defaults: a new key a day, the old one honoured for an hour after.
DEFAULT_ROTATION_SECONDS = 24 * 3600.0
DEFAULT_GRACE_SECONDS = 3600.0
# How far apart replicas' clocks may be at an epoch boundary.
FLEET_CLOCK_SKEW = 120.0


@dataclass(frozen=True, repr=False)
class HpkeKeyPair:
    """An X25519 key pair with the OHTTP key id it is published under."""

    key_id: int
    public_key: bytes
    created_at: float
    _private: KEMKeyInterface = field(compare=False)
    _x25519: X25519PrivateKey = field(compare=False)

    @classmethod
    def generate(cls, key_id: int, *, now: float, private_bytes: bytes | None = None
                 ) -> HpkeKeyPair:
        raw = private_bytes if private_bytes is not None else os.urandom(32)
        x25519 = X25519PrivateKey.from_private_bytes(raw)
        private = hpke_suite(OFFERED_SUITES[0]).kem.deserialize_private_key(raw)
        return cls(key_id, x25519.public_key().public_bytes_raw(), now, private, x25519)

    @property
    def private_key(self) -> KEMKeyInterface:
        """For the enclave's own HPKE contexts only."""
        return self._private

    def exchange(self, peer_public_key: bytes) -> bytes:
        """Raw X25519 with a peer's public key (for dialects that do their own KDF)."""
        return self._x25519.exchange(X25519PublicKey.from_public_bytes(peer_public_key))

    def key_config(self) -> KeyConfig:
        return KeyConfig(self.key_id, KEM_X25519_HKDF_SHA256, self.public_key, OFFERED_SUITES)

    def __repr__(self) -> str:
        return f"HpkeKeyPair(key_id={self.key_id}, public_key={self.public_key.hex()}, " \
               "private_key=[redacted])"

    __str__ = __repr__


class KeyRing:
    """The current key and, within its grace window, the previous one."""

    def __init__(
        self,
        *,
        rotation_seconds: float = DEFAULT_ROTATION_SECONDS,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        clock: Callable[[], float] = time.time,
        on_rotate: Callable[[HpkeKeyPair], None] | None = None,
        initial_key: HpkeKeyPair | None = None,
        derive: Callable[[int], bytes] | None = None,
    ) -> None:
        if grace_seconds > rotation_seconds:
            raise ValueError("the grace window must not outlast the rotation period")
        self._rotation = rotation_seconds
        self._grace = grace_seconds
        self._clock = clock
        self._on_rotate = on_rotate
        self._lock = threading.Lock()
        self._derive = derive
        self.epoch = 0
        self._previous: HpkeKeyPair | None = None
        if derive is not None:
            self.epoch = int(clock() // rotation_seconds)
            self._current = self._derived(self.epoch)
            self._previous = self._derived(self.epoch - 1)
        else:
            self._current = initial_key or HpkeKeyPair.generate(0, now=clock())

    def _derived(self, epoch: int) -> HpkeKeyPair:
        assert self._derive is not None
        return HpkeKeyPair.generate(epoch % 256, now=epoch * self._rotation,
                                    private_bytes=self._derive(epoch))

    def __repr__(self) -> str:
        return f"KeyRing(epoch={self.epoch}, key_id={self._current.key_id})"

    @property
    def rotation_seconds(self) -> float:
        return self._rotation

    def now(self) -> float:
        """The ring's clock (injected in tests)."""
        return self._clock()

    def current(self) -> HpkeKeyPair:
        self.rotate_if_due()
        return self._current

    def expires_at(self) -> float:
        """When the current key stops being handed out (clients refetch then)."""
        return self._current.created_at + self._rotation

    def accepted_until(self) -> float:
        """Until when a request opened now could still be opened: the end of the latest
        key accepted now (the next epoch's, in the fleet's look-ahead window before a
        rollover) plus the grace window. What a replay record must outlive."""
        end = self.expires_at()
        if self._derive is not None and self._clock() > end - FLEET_CLOCK_SKEW:
            end += self._rotation
        return end + self._grace

    def lookup(self, key_id: int) -> HpkeKeyPair | None:
        """The key published under `key_id`, if it is still accepted."""
        self.rotate_if_due()
        if key_id == self._current.key_id:
            return self._current
        prev = self._previous
        in_grace = self._clock() < self._current.created_at + self._grace
        if prev is not None and key_id == prev.key_id and in_grace:
            return prev
        if self._derive is not None and key_id == (self.epoch + 1) % 256 and \
                self._clock() > self.expires_at() - FLEET_CLOCK_SKEW:
            return self._derived(self.epoch + 1)  # a replica whose clock is ahead
        return None

    def honoured_keys(self) -> list[HpkeKeyPair]:
        """The current key, then the previous one while its grace window lasts."""
        current = self.current()
        previous = self.lookup(self._previous.key_id) if self._previous is not None else None
        return [current] if previous is None or previous is current else [current, previous]

    def key_configs(self) -> list[KeyConfig]:
        """Published configurations: the current key only (the previous one is honoured,
        not advertised)."""
        return [self.current().key_config()]

    def rotate_if_due(self) -> bool:
        now = self._clock()
        if now < self._current.created_at + self._rotation:
            return False
        return self.rotate(now=now)

    def rotate(self, *, now: float | None = None) -> bool:
        with self._lock:
            now = self._clock() if now is None else now
            if self._derive is not None:  # the epoch the clock says (the fleet's)
                epoch = max(self.epoch + 1, int(now // self._rotation))
                self._previous, self._current = self._derived(epoch - 1), self._derived(epoch)
                self.epoch = epoch
            else:
                self.epoch += 1
                self._previous = self._current
                self._current = HpkeKeyPair.generate(self.epoch % 256, now=now)
            rotated = self._current
        if self._on_rotate is not None:
            self._on_rotate(rotated)
        return True
