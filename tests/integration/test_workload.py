"""Workload identity with the real engine (issue 12): the report names the exact code,
configuration and models; a client pinned to one workload refuses another; what could
leak prompts or load unmeasured code refuses to start."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from enclave.demo_model import DEMO_MODEL_NAME, DEMO_MODEL_VERSION
from tests.environment import clean_environment
from tests.integration.conftest import (
    ROOT,
    SIMULATED_VALUES,
    RunningGateway,
    cloister,
)

pytestmark = pytest.mark.engine


def _attest(gateway: RunningGateway, *extra: str) -> tuple[int, str, str]:
    done = cloister("attest", "--gateway", gateway.url, *gateway.trust_args(), *extra)
    return done.returncode, done.stdout, done.stderr


def _workload_digest(gateway: RunningGateway) -> str:
    """The digest a gateway's evidence names (read, not verified: the tests verify it
    through pinned policies)."""
    import httpx

    return str(httpx.get(f"{gateway.url}/v1/attestation/report").json()["workload_digest"])


def _policy(tmp_path: Path, digest: str) -> Path:
    """A user's own policy pinning one workload on the simulated TEE."""
    from attestation.simulated import simulated_measurement
    from attestation.simulated.intel import MR_SEAM

    path = tmp_path / f"pin-{digest[:8]}.toml"
    path.write_text(SIMULATED_VALUES.format(version=1, digest=digest,
                                            measurement=simulated_measurement().hex(),
                                            mrseam=MR_SEAM.hex()))
    return path


def test_cloister_workload_and_the_running_gateway_agree(gateway, capped) -> None:
    for running in (gateway, capped):
        printed = cloister("workload", "--digest-only", *running.serve_args,
                           state_dir=running.state_dir)
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.strip() == _workload_digest(running)


def test_a_client_pinned_to_one_workload_refuses_the_other(gateway, capped, tmp_path) -> None:
    mine, capped_digest = _workload_digest(gateway), _workload_digest(capped)
    assert mine != capped_digest
    code, _, err = _attest(capped, "--policy", str(_policy(tmp_path, mine)))
    assert code == 1 and "workload_not_allowed" in err
    code, _, err = _attest(gateway, "--policy", str(_policy(tmp_path, capped_digest)))
    assert code == 1 and "workload_not_allowed" in err
    code, out, _ = _attest(gateway, "--policy", str(_policy(tmp_path, mine)))
    assert code == 0 and mine in out
    code, out, _ = _attest(capped, "--policy", str(_policy(tmp_path, capped_digest)))
    assert code == 0 and capped_digest in out


def test_engine_arguments_and_other_weights_change_the_digest(gateway, tmp_path) -> None:
    base = cloister("workload", "--digest-only", *gateway.serve_args).stdout.strip()
    more = cloister("workload", "--digest-only", *gateway.serve_args,
                    "--", "--max-num-seqs", "8").stdout.strip()
    demo = ROOT / ".cache" / f"{DEMO_MODEL_NAME}-v{DEMO_MODEL_VERSION}"
    forged = tmp_path / "forged"
    shutil.copytree(demo, forged)
    weights = forged / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    named = ["--served-model-name", "cloister-demo"]
    original = _manifest("--model", str(demo), *named)
    swapped = _manifest("--model", str(forged), *named)
    assert len({base, more}) == 2
    assert original["engine"]["models"][0]["name"] == swapped["engine"]["models"][0]["name"]
    pinned = original["engine"]["models"][0]["digest"]
    assert swapped["engine"]["models"][0]["digest"] != pinned
    refused = cloister("workload", "--model", str(forged), *named, "--model-digest", pinned)
    assert refused.returncode == 2 and "digest" in refused.stderr


def _manifest(*args: str) -> dict:
    done = cloister("workload", *args)
    assert done.returncode == 0, done.stderr
    manifest_text, _digest, _ = done.stdout.rsplit("\n", 2)
    return json.loads(manifest_text)


@pytest.mark.parametrize("flag", ["--kv-events-config", "--logging-config",
                                  "--otlp-traces-endpoint", "--trust-remote-code"])
def test_arguments_that_could_leak_prompts_are_refused_at_start(flag, tmp_path) -> None:
    done = cloister("serve", "--attestation", "simulated", "--port", "1", "--", flag, "x",
                    state_dir=tmp_path)
    assert done.returncode == 2
    assert f"engine argument not allowed inside the enclave: {flag}" in done.stderr
    assert "engine_started" not in done.stderr


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PYTHONPATH", "PYTHONSTARTUP", "OPENSSL_CONF",
                                  "GCONV_PATH", "SSL_CERT_FILE", "HF_TRUST_REMOTE_CODE",
                                  "VLLM_NOT_A_SETTING", "ANYTHING_UNLISTED"])
def test_variables_that_inject_code_are_refused_at_start(name, tmp_path) -> None:
    """The environment is an allow-list: a code-loading variable, a vLLM setting vLLM does
    not document, or anything unlisted refuses the start and is named (issue 27)."""
    env = clean_environment(**{name: str(tmp_path / "nothing")})
    done = cloister("serve", "--attestation", "simulated", "--port", "1", env=env,
                    state_dir=tmp_path)
    assert done.returncode == 2 and f"{name} is set" in done.stderr


def test_a_host_that_pinned_another_workload_is_refused_at_start(tmp_path) -> None:
    done = cloister("serve", "--attestation", "simulated", "--port", "1",
                    "--simulated-host-data", "ab" * 32, state_dir=tmp_path)
    assert done.returncode == 2 and "pinned another workload" in done.stderr


def test_cloister_attest_shows_what_the_gateway_runs(gateway) -> None:
    code, out, err = _attest(gateway)
    assert code == 0, err
    for expected in ("pinned at launch  yes", "workload digest", "cloister-demo",
                     "all-MiniLM-L6-v2", "--max-model-len 2048", "insecure_plaintext",
                     "simulated-sev-snp"):
        assert expected in out
