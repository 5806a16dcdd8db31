"""Tests wait on what they are waiting for, not on a clock: `wait_until` reads a value
until it is the one wanted (or a generous deadline passes, and the test's own assert then
says what was missing)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(read: Callable[[], T], done: Callable[[T], bool] = bool, *,
               timeout: float = 30, interval: float = 0.05) -> T:
    """`read()` once `done` holds of it, or its last value when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while not done(value := read()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value
