"""No process outlives the gateway: the children of a process that died (an engine core
killed with its workers still running) come back to the gateway, which stops them on its
way out. Run in a process of its own (a subreaper is a property of the process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = """
import json, os, signal, subprocess, sys, time
from gateway.reaping import become_subreaper, stop_descendants
subreaper = sys.argv[1] == "subreaper" and become_subreaper()
# a "core" that starts a "worker" of its own, then is killed (the OOM killer)
core = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; w = subprocess.Popen(['sleep', '600'], "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
    "print(w.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL, text=True)
worker = int(core.stdout.readline())
os.kill(core.pid, signal.SIGKILL)
core.wait()
time.sleep(0.2)  # the orphan is handed to its new parent
stopped = stop_descendants(grace=5)
print(json.dumps({"subreaper": subreaper, "worker": worker, "stopped": stopped}))
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER")
@pytest.mark.parametrize("mode", ["subreaper", "plain"])
def test_an_orphaned_worker_is_stopped_only_by_a_subreaper(mode) -> None:
    done = subprocess.run([sys.executable, "-c", SCENARIO, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    try:
        if mode == "subreaper":
            assert result["subreaper"] is True
            assert result["stopped"] == [result["worker"]]
            assert not _alive(result["worker"])
        else:  # without it the orphan went to init, beyond the gateway's reach
            assert result["stopped"] == []
            assert _alive(result["worker"])
    finally:
        if _alive(result["worker"]):
            os.kill(result["worker"], signal.SIGKILL)
