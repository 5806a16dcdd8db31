"""Reference values you can check (issue 13), with the real engine: the default proxy
(simulated roots, no policy) verifies a default `make serve` gateway through the statement
it serves, and refuses a gateway whose workload no trusted statement names, or whose
statement an untrusted key signed; a proxy with nothing to check against refuses to
start."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.environment import clean_environment
from tests.integration.conftest import (
    ROOT,
    RunningGateway,
    cloister,
    free_port,
    listener_args,
    start_gateway,
    stop_gateway,
)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """What `make serve` starts: every default, the simulated TEE."""
    folder = tmp_path_factory.mktemp("default")
    running = start_gateway(*listener_args(tls=False, metrics=False), "--attestation", "simulated",
                            log_path=folder / "gateway.log", state_dir=folder / "state")
    yield running
    stop_gateway(running)


def _attest(gateway: RunningGateway, *trust: str) -> subprocess.CompletedProcess[str]:
    return cloister("attest", "--gateway", gateway.url, *trust)


def test_the_default_proxy_verifies_a_default_gateway_and_the_sdk_works(
        default_gateway, tmp_path) -> None:
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "cli", "proxy", "--gateway", default_gateway.url,
         "--port", str(port), "--simulated-roots", str(default_gateway.simulated_roots),
         "--state-dir", str(tmp_path)],
        cwd=ROOT, env=clean_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        reply = sdk.chat.completions.create(model="latest", max_tokens=4, messages=[
            {"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    assert "new_reference_values" in proxy.stderr.read().decode()
    assert (tmp_path / "accepted-statements.log").read_text().count("\n") == 1


def test_cloister_attest_names_the_statement_it_checked(default_gateway) -> None:
    done = _attest(default_gateway, "--simulated-roots", str(default_gateway.simulated_roots))
    assert done.returncode == 0, done.stderr
    assert "release statement v1" in done.stdout and "pinned at launch  yes" in done.stdout


def test_a_gateway_whose_workload_no_statement_names_is_refused(capped) -> None:
    """`--max-tokens 8`: the simulated statement covers the default workload only."""
    done = _attest(capped, "--simulated-roots", str(capped.simulated_roots))
    assert done.returncode == 1 and "workload_not_allowed" in done.stderr


def test_a_statement_signed_by_an_untrusted_key_is_refused(gateway) -> None:
    only_roots = _attest(gateway, "--simulated-roots", str(gateway.simulated_roots))
    assert only_roots.returncode == 1
    assert "statement_signed_by_untrusted_key" in only_roots.stderr
    trusted = _attest(gateway, *gateway.trust_args())
    assert trusted.returncode == 0, trusted.stderr


def test_a_proxy_with_nothing_to_check_against_refuses_to_start(default_gateway) -> None:
    done = cloister("proxy", "--gateway", default_gateway.url, "--port", str(free_port()),
                    timeout=60)
    assert done.returncode == 2 and "no reference values" in done.stderr
