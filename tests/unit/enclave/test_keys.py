"""Key custody: rotation with a grace window, and no private key in any repr."""

from __future__ import annotations

import pytest

from enclave.keys import HpkeKeyPair, KeyRing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rotation_issues_a_new_key_id_and_honours_the_old_one_for_the_grace_window() -> None:
    clock, rotated = Clock(), []
    ring = KeyRing(rotation_seconds=100, grace_seconds=10, clock=clock, on_rotate=rotated.append)
    first = ring.current()
    clock.now += 100
    second = ring.current()
    assert second.key_id == first.key_id + 1
    assert second.public_key != first.public_key
    assert rotated == [second]
    assert ring.lookup(first.key_id) is first
    clock.now += 10
    assert ring.lookup(first.key_id) is None
    assert ring.lookup(second.key_id) is second
    assert [c.key_id for c in ring.key_configs()] == [second.key_id]


def test_key_ids_wrap_within_one_byte() -> None:
    clock = Clock()
    ring = KeyRing(rotation_seconds=1, grace_seconds=0, clock=clock)
    for _ in range(300):
        clock.now += 1
        ring.current()
    assert ring.current().key_id == 300 % 256


def test_grace_longer_than_rotation_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyRing(rotation_seconds=10, grace_seconds=11)


def test_private_key_never_appears_in_repr() -> None:
    raw = bytes(range(32))
    key = HpkeKeyPair.generate(3, now=0, private_bytes=raw)
    for text in (repr(key), str(key), repr(KeyRing(initial_key=key))):
        assert raw.hex() not in text
        assert "[redacted]" in text or "KeyRing" in text
    assert key.public_key.hex() in repr(key)
