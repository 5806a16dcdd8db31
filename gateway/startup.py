"""What `cloister serve` says while it starts (issue 33): each step that takes time, with
how long it took, and once the gateway is ready, a block with its URLs, its workload
digest and the command a client runs. On a terminal, as lines for a person; elsewhere
(a service manager, a container log), the same as JSON log lines (`startup_step`,
`startup_ready`)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

import structlog

log = structlog.get_logger("cloister.startup")


class Startup:
    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.tty = self._stream.isatty() if tty is None else tty
        self._began = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def _say(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """One step: said as it starts and when it is done, with its duration."""
        if self.tty:
            self._say(f"  {what} ...")
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        self.steps.append((what, took))
        if self.tty:
            self._say(f"  {what}: done in {took:.1f} s")
        else:
            log.info("startup_step", step=what, duration_s=round(took, 2))

    def ready(self, urls: dict[str, str], workload: str, client: str) -> None:
        took = time.monotonic() - self._began
        if not self.tty:
            log.info("startup_ready", urls=urls, workload=workload, client=client,
                     duration_s=round(took, 1))
            return
        width = max(len(name) for name in urls)
        lines = [f"Cloister is ready ({took:.0f} s after start).",
                 *(f"  {name.ljust(width)}  {url}" for name, url in urls.items()),
                 f"  {'workload'.ljust(width)}  {workload}",
                 "A client runs:", f"  {client}"]
        rule = "-" * max(len(line) for line in lines)
        self._say("\n".join([rule, *lines, rule]))
