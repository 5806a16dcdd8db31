"""One real gateway per test session: `cloister serve` under uvicorn on a free loopback
port, with the real vLLM CPU engine, the demo model and the packaged embedding model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Model load plus torch.compile warm-up of two engines on 2 CPU cores: minutes, not seconds.
STARTUP_TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningGateway:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path
        self.simulated_roots = Path()
        self.tls_url = ""
        self.state_dir = Path()
        self.serve_args: list[str] = []

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def start_gateway(*args: str, log_path: Path, state_dir: Path) -> RunningGateway:
    port, tls_port = free_port(), free_port()
    env = dict(os.environ)
    env.setdefault("CLOISTER_CACHE", str(ROOT / ".cache"))
    env["CLOISTER_STATE"] = str(state_dir)
    log = log_path.open("wb")
    serve_args = ["--port", str(port), "--tls", "--tls-port", str(tls_port),
                  "--tls-host", "127.0.0.1", *args]
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", *serve_args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    gateway = RunningGateway(f"http://127.0.0.1:{port}", process, log_path)
    gateway.serve_args = serve_args
    gateway.simulated_roots = state_dir / "simulated-roots.pem"
    gateway.tls_url = f"https://127.0.0.1:{tls_port}"
    gateway.state_dir = state_dir
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gateway.log_tail()}")
        try:
            if httpx.get(f"{gateway.url}/ready", timeout=2).status_code == 200:
                return gateway
        except httpx.TransportError:
            pass
        time.sleep(1)
    stop_gateway(gateway)
    raise RuntimeError(f"gateway not ready after {STARTUP_TIMEOUT_S}s:\n{gateway.log_tail()}")


def stop_gateway(gateway: RunningGateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("gateway")
    started = time.monotonic()
    running = start_gateway("--insecure-plaintext", "--attestation", "simulated",
                            log_path=folder / "gateway.log", state_dir=folder / "state")
    print(f"\nreal gateway ready in {time.monotonic() - started:.1f}s at {running.url}")
    yield running
    stop_gateway(running)


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=120) as c:
        yield c


def cloister(*args: str, state_dir: Path | None = None, timeout: float = 180,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `cloister` command line as a user would."""
    environment = dict(os.environ if env is None else env)
    environment.setdefault("CLOISTER_CACHE", str(ROOT / ".cache"))
    if state_dir is not None:
        environment["CLOISTER_STATE"] = str(state_dir)
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=environment)


def dialect_client(gateway: RunningGateway, protocol: str, *,
                   transport: httpx.AsyncBaseTransport | None = None):  # type: ignore[no-untyped-def]
    """A client of the real gateway in `protocol`, verifying its (simulated) attestation
    exactly as `cloister proxy --simulated-roots` does."""
    from attestation.verify import Policy, TrustRoots
    from proxy.attestor import Attestor
    from proxy.dialects import make_client

    roots = TrustRoots().with_simulated(gateway.simulated_roots.read_bytes())
    return make_client(gateway.url, protocol, transport=transport,
                       attestation=Attestor(gateway.url, roots=roots, policy=Policy()))
