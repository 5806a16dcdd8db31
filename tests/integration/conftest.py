"""Real gateways for the integration tests: `cloister serve` under uvicorn on free loopback
ports, with the real vLLM CPU engine, the demo model and the packaged embedding model.

The session gateway is run the way an operator runs a non-default one: its workload
digest is computed first (`cloister workload`), signed into a release statement with the
operator's release key (`cloister release sign`) and served (`--reference-values`);
clients trust that key (`--release-key`) and the simulated roots."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from attestation.simulated.intel import MR_SEAM
from tests.environment import clean_environment

ROOT = Path(__file__).resolve().parents[2]
# Model load plus torch.compile warm-up of two engines on 2 CPU cores: minutes, not seconds.
STARTUP_TIMEOUT_S = 900
SIMULATED_VALUES = """version = {version}
valid_days = 7
workloads = ["{digest}"]
[platforms.simulated-sev-snp]
measurements = ["{measurement}"]
[platforms.simulated-tdx]
mrtd = ["{measurement}"]
mrseam = ["{mrseam}"]
"""


# Ports handed to the processes the tests start come from below the kernel's ephemeral
# range (32768-60999 on Linux): a port the kernel picks for someone's port-0 bind (vLLM's
# ZMQ sockets, every client connection) cannot be one a gateway is about to listen on,
# which happened in the seconds between choosing a port and the gateway binding it.
_HANDED: set[int] = set()
_LOW, _HIGH = 20000, 32000


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range, not handed out before
    in this test session."""
    import random

    for _ in range(1000):
        port = random.randrange(_LOW, _HIGH)
        if port in _HANDED:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


class RunningGateway:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path
        self.simulated_roots = Path()
        self.tls_url = ""
        self.metrics_url = ""  # the scrape-only listener
        self.state_dir = Path()
        self.serve_args: list[str] = []
        self.release_key: Path | None = None  # the operator's public key, if it signed
        self.admin_key: Path | None = None  # the operator's admin private key, if pinned
        self.api_key: str | None = None  # a platform API key (Atoma requests carry one)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def url_for(self, protocol: str) -> str:
        """Where a client of `protocol` goes: Atoma with accounts (a platform key) only
        over the attested TLS listener."""
        return self.tls_url if protocol == "atoma" and self.api_key else self.url

    def trust_args(self) -> list[str]:
        """What a client names to trust this gateway."""
        args = ["--simulated-roots", str(self.simulated_roots)]
        return args + (["--release-key", str(self.release_key)] if self.release_key else [])


def cloister(*args: str, state_dir: Path | None = None, timeout: float = 180,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `cloister` command line as a user would."""
    environment = clean_environment() if env is None else dict(env)
    environment.setdefault("CLOISTER_CACHE", str(ROOT / ".cache"))
    if state_dir is not None:
        environment["CLOISTER_STATE"] = str(state_dir)
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=environment)


def listener_args(*, tls: bool = True, metrics: bool = True) -> list[str]:
    args = ["--port", str(free_port())]
    if metrics:
        args += ["--metrics-port", str(free_port())]
    if tls:
        args += ["--tls", "--tls-port", str(free_port()), "--tls-host", "127.0.0.1"]
    return args


def start_gateway(*args: str, log_path: Path, state_dir: Path) -> RunningGateway:
    """`cloister serve ARGS` (ARGS name the listeners: see `listener_args`)."""
    env = clean_environment()
    env.setdefault("CLOISTER_CACHE", str(ROOT / ".cache"))
    env["CLOISTER_STATE"] = str(state_dir)
    log = log_path.open("wb")
    serve_args = list(args)
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", *serve_args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    port = serve_args[serve_args.index("--port") + 1]
    gateway = RunningGateway(f"http://127.0.0.1:{port}", process, log_path)
    gateway.serve_args = serve_args
    gateway.simulated_roots = state_dir / "simulated-roots.pem"
    if "--tls-port" in serve_args:
        gateway.tls_url = f"https://127.0.0.1:{serve_args[serve_args.index('--tls-port') + 1]}"
    if "--metrics-port" in serve_args:
        port = serve_args[serve_args.index("--metrics-port") + 1]
        gateway.metrics_url = f"http://127.0.0.1:{port}"
    gateway.state_dir = state_dir
    try:
        wait_ready(f"{gateway.url}/ready", process, log_path)
    except RuntimeError:
        stop_gateway(gateway)
        raise
    return gateway


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path,
               timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Until `url` answers 200; `RuntimeError` with the log's tail if the process exits
    first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"not ready after {timeout}s:\n"
                       f"{log_path.read_text(errors='replace')[-3000:]}")


def stop_gateway(gateway: RunningGateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()


def sign_release(serve_args: list[str], folder: Path, *, version: int = 1) -> tuple[Path, Path]:
    """The operator's release: a key, and a statement over the workload `serve_args`
    describe; (statement, public key)."""
    from attestation.simulated import simulated_measurement

    key = folder / "release.key"
    if not key.exists():
        done = cloister("release", "keygen", "--out", str(key))
        assert done.returncode == 0, done.stderr
    printed = cloister("workload", "--digest-only", *serve_args)
    assert printed.returncode == 0, printed.stderr
    values = folder / f"VALUES-{version}.toml"
    values.write_text(SIMULATED_VALUES.format(version=version, digest=printed.stdout.strip(),
                                              measurement=simulated_measurement().hex(),
                                              mrseam=MR_SEAM.hex()))
    statement = folder / f"statement-{version}.json"
    signed = cloister("release", "sign", "--key", str(key), "--values", str(values),
                      "--out", str(statement))
    assert signed.returncode == 0, signed.stderr
    return statement, Path(f"{key}.pub")


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("gateway")
    started = time.monotonic()
    admin_key = folder / "admin.key"
    made = cloister("admin", "keygen", "--out", str(admin_key))
    assert made.returncode == 0, made.stderr
    args = [*listener_args(), "--insecure-plaintext", "--attestation", "simulated",
            "--admin-public-key", f"{admin_key}.pub"]
    engine_args = ["--", "--enable-prompt-tokens-details"]  # usage shows cached tokens
    statement, public_key = sign_release([*args, *engine_args], folder)
    running = start_gateway(*args, "--reference-values", str(statement), *engine_args,
                            log_path=folder / "gateway.log", state_dir=folder / "state")
    running.release_key = public_key
    running.admin_key = admin_key
    made = cloister("apikey", "create", "--name", "dialects", "--budget-tokens", "10000000",
                    state_dir=running.state_dir)
    assert made.returncode == 0, made.stderr
    running.api_key = made.stdout.split()[0]
    print(f"\nreal gateway ready in {time.monotonic() - started:.1f}s at {running.url}")
    yield running
    stop_gateway(running)


@pytest.fixture(scope="session")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway that differs from the default one by `--max-tokens` (and serves no
    embedding model, to start faster)."""
    folder = tmp_path_factory.mktemp("capped")
    args = [*listener_args(tls=False), "--attestation", "simulated", "--max-tokens", "8",
            "--embedding-model", "none"]
    # No --reference-values: it serves the simulated TEE's statement, which covers the
    # default workload, not this one (test_reference_values.py relies on that).
    running = start_gateway(*args, log_path=folder / "gateway.log",
                            state_dir=folder / "state")
    yield running
    stop_gateway(running)


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=120) as c:
        yield c


def dialect_client(gateway: RunningGateway, protocol: str, *,
                   transport: httpx.AsyncBaseTransport | None = None):  # type: ignore[no-untyped-def]
    """A client of the real gateway in `protocol`, verifying its (simulated) attestation
    and its signed release statement exactly as `cloister proxy` does."""
    from proxy.attestor import Attestor
    from proxy.dialects import make_client
    from proxy.trust import load_trust

    trust = load_trust(release_keys=[gateway.release_key] if gateway.release_key else [],
                       policy=None, simulated_roots=gateway.simulated_roots)
    url = gateway.url_for(protocol)
    return make_client(url, protocol, transport=transport, api_key=gateway.api_key,
                       attestation=Attestor(url, trust=trust, tls_verify=False))
