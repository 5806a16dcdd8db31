"""`cloister serve` refusals decided from the command line alone."""

from __future__ import annotations

import os

import pytest

from cli.main import main
from cli.serve import unsealable
from enclave.sealed_state import SEV_GUEST
from gateway.config import ServeConfig


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_a_worker_count_below_one_is_refused(count, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", count])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err


@pytest.mark.skipif(os.path.exists(SEV_GUEST), reason="this machine has a firmware key")
@pytest.mark.parametrize(("attestation", "data_key", "refused"), [
    ("auto", "auto", True),  # real hardware, no firmware key, no key file named
    ("tdx", "auto", True),
    ("tdx", "file:/encrypted/data-key", False),
    ("simulated", "auto", False),
])
def test_stored_state_is_never_sealed_with_an_unprotected_key(attestation, data_key,
                                                              refused) -> None:
    """Decided before anything starts (the parent of `--workers` made the key file
    before its workers refused)."""
    config = ServeConfig.of(attestation=attestation, data_key=data_key)
    assert unsealable(config) is refused


@pytest.fixture
def port_held_by_another_process():
    """A port a child process listens on (its pid and port); the child reads stdin until
    it is closed."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys\n"
         "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
         "print(s.getsockname()[1], flush=True); sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield holder.pid, int(holder.stdout.readline())
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


@pytest.mark.parametrize("command", [
    ["serve", "--port", "{port}"],
    ["serve", "--port", "0", "--metrics-port", "{port}"],
    ["keyholder", "--port", "{port}"],
    ["proxy", "--gateway", "http://127.0.0.1:9", "--insecure-skip-attestation",
     "--port", "{port}"],
])
def test_a_busy_port_is_refused_at_once_naming_the_process_that_holds_it(
        command, port_held_by_another_process, capsys, tmp_path, monkeypatch) -> None:
    """Before the engine starts (a gateway that found out after its minute of start-up
    wasted it); the holder named, so the operator knows what to stop."""
    monkeypatch.chdir(tmp_path)
    pid, port = port_held_by_another_process
    assert main([part.format(port=port) for part in command]) == 2
    error = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use by pid {pid} (" in error
    assert "socket.socket()" in error  # the holder's command line
    flag = "--metrics-port" if "--metrics-port" in command else "--port"
    assert f"choose another with {flag}" in error


def test_a_free_port_is_not_refused() -> None:
    from cli.ports import busy_port_errors

    assert busy_port_errors([("127.0.0.1", 0, "--port"), ("127.0.0.1", None, "--x")]) == []


def test_make_serve_starts_the_gateway_with_an_environment_it_accepts() -> None:
    """make exports MAKEFLAGS and a developer's shell sets CA bundles: `cloister serve`
    refuses both (its environment is an allow-list), so `make serve` passes on only what
    it accepts (found by a newcomer: make serve could not start at all)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    recipe = (root / "Makefile").read_text().split("\nserve:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/allowed_env.py $(VENV)/bin/cloister serve" in recipe
    check = ("import os; from enclave.isolation import environment_refusal; "
             "print(environment_refusal(os.environ))")
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "allowed_env.py"), sys.executable, "-c",
         check], cwd=root, capture_output=True, text=True, timeout=60,
        env={**os.environ, "MAKEFLAGS": "", "MAKELEVEL": "1", "SSL_CERT_FILE": "/x.pem"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    assert "not passing" in done.stderr and "MAKEFLAGS" in done.stderr
