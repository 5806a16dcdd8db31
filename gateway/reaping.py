"""No process outlives the gateway (issue 31). vLLM's engine core starts processes of its
own (its workers); when the core dies (the OOM killer, a crash), they are orphaned and,
by default, handed to init, where nothing of ours stops them. The gateway therefore makes
itself their subreaper before it starts the engine (Linux `PR_SET_CHILD_SUBREAPER`:
orphaned descendants come back to it), and on its way out stops every descendant still
there: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import contextlib
import ctypes

import psutil
import structlog

log = structlog.get_logger("cloister.cli")
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def become_subreaper() -> bool:
    """Whether orphaned descendants now come back to this process (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def stop_descendants(grace: float = 5.0) -> list[int]:
    """Stop every process below this one; the pids that were still there."""
    try:
        left = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(left, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)
    if left:
        log.info("descendants_stopped", count=len(left), killed=len(alive))
    return [process.pid for process in left]
