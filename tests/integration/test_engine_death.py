"""The real vLLM engine core killed mid-stream (SIGKILL, as the OOM killer would): the
stream in flight ends with a sealed error its client opens, `/health` says so within 2 s,
the process exits non-zero for its supervisor to restart it, and nothing of the prompt
nor a traceback reaches the log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from proxy.attestor import Unverified
from proxy.dialects import make_client
from tests.integration.conftest import listener_args, start_gateway, stop_gateway

pytestmark = pytest.mark.engine

PROMPT = "the-violet-heron-sings-at-dawn"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped by init does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _engine_core(pid: int) -> int:
    for child in _descendants(pid):
        try:
            if b"EngineCore" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    raise AssertionError("no vLLM EngineCore process under the gateway")


def test_the_engine_killed_mid_stream(tmp_path) -> None:
    gateway = start_gateway(*listener_args(tls=False, metrics=False), "--attestation",
                            "simulated", "--embedding-model", "none",
                            log_path=tmp_path / "gateway.log", state_dir=tmp_path / "state")
    try:
        core = _engine_core(gateway.process.pid)
        started = _descendants(gateway.process.pid)

        async def stream_and_kill() -> bytes:
            client = make_client(gateway.url, "ohttp", attestation=Unverified())
            body = json.dumps({"model": "cloister-demo", "max_tokens": 1500, "stream": True,
                               "ignore_eos": True,
                               "messages": [{"role": "user", "content": PROMPT}]}).encode()
            received = []
            try:
                async with client.stream("POST", "/v1/chat/completions", body) as stream:
                    async for chunk in stream.chunks():
                        received.append(chunk)
                        if len(received) == 2:
                            os.kill(core, signal.SIGKILL)
                            killed_at.append(time.monotonic())
            finally:
                await client.aclose()
            return b"".join(received)

        killed_at: list[float] = []
        text = asyncio.run(stream_and_kill())
        # vLLM's own error event, or ours if the stream broke: sealed, then a sealed end
        last = [e for e in text.split(b"\n\n") if e.startswith(b"data: {")][-1]
        assert b'"error"' in last and text.rstrip().endswith(b"data: [DONE]")
        health = None
        while time.monotonic() - killed_at[0] < 10:
            try:
                health = httpx.get(f"{gateway.url}/health", timeout=1)
                if health.status_code == 503:
                    break
            except httpx.TransportError:
                break
            time.sleep(0.1)
        assert health is not None and health.status_code == 503
        assert health.json()["error"]["code"] == "engine_failed"
        noticed = time.monotonic() - killed_at[0]
        print(f"\nengine killed: /health said engine_failed {noticed:.2f} s later")
        assert noticed < 2
        assert gateway.process.wait(timeout=120) != 0
        # no process outlives the gateway, not even the workers the killed core started
        left = [pid for pid in started if _alive(pid)]
        assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left]
    finally:
        if gateway.process.poll() is None:
            stop_gateway(gateway)
    log = gateway.log_path.read_text(errors="replace")
    assert PROMPT not in log
    assert "Traceback" not in log
    assert "engine_failed" in log
