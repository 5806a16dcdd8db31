"""The wheel is what an image installs (`pip install .`): installed alone into a fresh
virtual environment, away from the source tree, `cloister serve` must reach `/ready` with
the real engine and answer every dialect, attested (issue 27: the wheel once lacked two
dialects, and the editable install of development hid it).

The fresh environment borrows the test environment's third-party packages through a
`.pth` line (a second 3.5 GB install of vLLM would not fit CI's time); Cloister's own
packages come from the wheel only, which the test checks."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import PROTOCOLS
from tests.environment import clean_environment
from tests.integration.conftest import (
    ROOT,
    SIMULATED_VALUES,
    RunningGateway,
    dialect_client,
    listener_args,
    stop_gateway,
    wait_ready,
)
from tests.wheel import build_wheel

pytestmark = pytest.mark.engine
PACKAGES = ("cli", "gateway", "enclave", "attestation", "proxy")
CHAT = {"model": "cloister-demo", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4, "ignore_eos": True}


class FreshInstall:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.python = folder / "venv" / "bin" / "python"
        self.cloister = folder / "venv" / "bin" / "cloister"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`cloister ARGS` of the fresh install, from a folder with no source in it."""
        return subprocess.run([str(self.cloister), *args], cwd=self.folder, text=True,
                              capture_output=True, timeout=timeout, env=self.env())

    def env(self) -> dict[str, str]:
        return clean_environment(CLOISTER_CACHE=str(ROOT / ".cache"),
                                 CLOISTER_STATE=str(self.folder / "state"))


def _install(folder: Path) -> FreshInstall:
    wheel = build_wheel(folder)
    fresh = FreshInstall(folder)
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    site = Path(subprocess.check_output(
        [str(fresh.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    (site / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(fresh.python), "install", "--no-deps",
         "--no-index", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    return fresh


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> FreshInstall:
    return _install(tmp_path_factory.mktemp("wheel"))


def test_the_fresh_install_runs_cloister_from_the_wheel_alone(fresh) -> None:
    program = ("import json, importlib, sys; print(json.dumps({p: importlib.import_module(p)"
               ".__file__ for p in sys.argv[1:]}))")
    where = subprocess.run(
        [str(fresh.python), "-c", program, *PACKAGES],
        cwd=fresh.folder, capture_output=True, text=True, timeout=120, env=fresh.env())
    assert where.returncode == 0, where.stderr
    for package, path in json.loads(where.stdout).items():
        assert str(fresh.folder / "venv") in path and str(ROOT) not in path, package


@pytest.fixture(scope="module")
def wheel_gateway(fresh) -> Iterator[RunningGateway]:
    from attestation.simulated import simulated_measurement
    from attestation.simulated.intel import MR_SEAM

    args = [*listener_args(), "--attestation", "simulated", "--embedding-model", "none"]
    made = fresh.run("release", "keygen", "--out", "release.key")
    assert made.returncode == 0, made.stderr
    digest = fresh.run("workload", "--digest-only", *args)
    assert digest.returncode == 0, digest.stderr
    (fresh.folder / "VALUES.toml").write_text(SIMULATED_VALUES.format(
        version=1, digest=digest.stdout.strip(), measurement=simulated_measurement().hex(),
        mrseam=MR_SEAM.hex()))
    signed = fresh.run("release", "sign", "--key", "release.key", "--values", "VALUES.toml",
                       "--out", "statement.json")
    assert signed.returncode == 0, signed.stderr
    log = fresh.folder / "serve.log"
    process = subprocess.Popen(
        [str(fresh.cloister), "serve", *args, "--reference-values", "statement.json"],
        cwd=fresh.folder, env=fresh.env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    port = args[args.index("--port") + 1]
    running = RunningGateway(f"http://127.0.0.1:{port}", process, log)
    running.tls_url = f"https://127.0.0.1:{args[args.index('--tls-port') + 1]}"
    running.simulated_roots = fresh.folder / "state" / "simulated-roots.pem"
    running.release_key = fresh.folder / "release.key.pub"
    try:
        wait_ready(f"{running.url}/ready", process, log)
        made = fresh.run("apikey", "create", "--name", "wheel")
        assert made.returncode == 0, made.stderr
        running.api_key = made.stdout.split()[0]
        yield running
    finally:
        stop_gateway(running)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_every_dialect_answers_from_the_wheel(wheel_gateway, protocol) -> None:
    client = dialect_client(wheel_gateway, protocol)
    try:
        answer = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
        assert json.loads(answer.body)["usage"]["completion_tokens"] == 4
    finally:
        await client.aclose()
