"""From a build to checkable reference values (issue 13): the model as a reproducible
dm-verity volume, measurements and a workload digest computed by the project's own
commands, a signed statement that `cloister release verify` accepts."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from enclave.demo_model import DEMO_MODEL_NAME, DEMO_MODEL_VERSION, ensure_demo_model
from tests.integration.conftest import ROOT, cloister

VOLUME = ROOT / "deploy" / "model-volume.sh"


def _volume(model: Path, out: Path) -> str:
    done = subprocess.run([str(VOLUME), str(model), str(out)], capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


def test_the_demo_model_volume_is_reproducible_and_verity_catches_a_flipped_byte(
        tmp_path) -> None:
    model = ensure_demo_model(ROOT / ".cache" / f"{DEMO_MODEL_NAME}-v{DEMO_MODEL_VERSION}")
    first, second = _volume(model, tmp_path / "a"), _volume(model, tmp_path / "b")
    assert first == second and len(bytes.fromhex(first)) == 32
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    ok = subprocess.run([str(VOLUME), "--verify", str(tmp_path / "a"), first])
    assert ok.returncode == 0
    image = bytearray((tmp_path / "b.img").read_bytes())
    image[len(image) // 2] ^= 0x01
    (tmp_path / "b.img").write_bytes(bytes(image))
    bad = subprocess.run([str(VOLUME), "--verify", str(tmp_path / "b"), first],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "failed" in bad.stderr.lower()


def test_a_build_becomes_values_and_a_statement_the_release_key_verifies(tmp_path) -> None:
    """The project's own commands, end to end: the workload digest, the launch
    measurements for two vCPU counts, TDX values, VALUES.toml, the signed statement."""
    key = tmp_path / "release.key"
    assert cloister("release", "keygen", "--out", str(key)).returncode == 0
    printed = cloister("workload", "--digest-only", "--attestation", "simulated",
                       "--model-verity-root", "cd" * 32)
    assert printed.returncode == 0, printed.stderr
    workload = printed.stdout.strip()
    values = tmp_path / "VALUES.toml"
    made = cloister("release", "values", "--out", str(values), "--version", "1",
                    "--workload", workload, "--ovmf", "/usr/share/ovmf/OVMF.fd", "--vcpus", "4",
                    "--vcpus", "8", "--vcpu-type", "EPYC-v4", "--tdx-mrtd", "ab" * 48,
                    "--tdx-mrseam", "cd" * 48)
    assert made.returncode == 0, made.stderr
    text = values.read_text()
    assert text.count("vcpus = ") == 2 and 'mrtd = ["' + "ab" * 48 in text
    statement = tmp_path / "statement.json"
    signed = cloister("release", "sign", "--key", str(key), "--values", str(values), "--out",
                      str(statement))
    assert signed.returncode == 0, signed.stderr
    verified = cloister("release", "verify", str(statement), "--release-key", f"{key}.pub")
    assert verified.returncode == 0 and "sev-snp, tdx" in verified.stdout
    assert workload in verified.stdout


def test_cloister_release_sign_simulated_signs_for_any_settings_and_prints_the_lines(
        tmp_path) -> None:
    """The simulated TEE has no wall (issue 33): one command signs a statement for a
    non-default workload with the simulated release key and prints the exact lines."""
    from attestation.statement import load_public_keys, verify_statement

    flags = ["--tls", "--max-tokens", "64"]
    signed = cloister("release", "sign", "--simulated", "--", *flags, state_dir=tmp_path)
    assert signed.returncode == 0, signed.stderr
    digest = cloister("workload", "--digest-only", "--attestation", "simulated", *flags,
                      state_dir=tmp_path).stdout.strip()
    lines = signed.stdout.splitlines()
    assert f"for workload {digest}" in lines[0]
    serve = next(line.strip() for line in lines if line.strip().startswith("cloister serve"))
    proxy = next(line.strip() for line in lines if line.strip().startswith("cloister proxy"))
    statement = Path(serve.split("--reference-values ")[1].split()[0])
    assert serve.endswith("--attestation simulated --tls --max-tokens 64")
    roots = tmp_path / "simulated-roots.pem"
    assert f"--simulated-roots {roots}" in proxy and proxy.startswith(
        "cloister proxy --gateway https://127.0.0.1:8443")
    verified = verify_statement(statement.read_bytes(), load_public_keys(roots.read_bytes()),
                                now=dt.datetime.now(dt.UTC))
    assert digest in verified.values.workloads and verified.values.version == 1
    again = cloister("release", "sign", "--simulated", "--", *flags, state_dir=tmp_path)
    assert "signed version 2" in again.stdout  # one version line for the key
