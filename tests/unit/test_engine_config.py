"""Engine configuration and process isolation (DESIGN section 3)."""

from __future__ import annotations

import os
import stat

import pytest

from enclave.isolation import isolate_engine_environment
from enclave.vllm_engine import EngineConfigError, ModelSpec


def test_isolation_forces_spawn_private_rpc_dir_and_no_usage_stats() -> None:
    env = {"VLLM_NO_USAGE_STATS": "0", "CLOISTER_SECRET_X": "s3cret", "PATH": "/bin"}
    rpc_dir = isolate_engine_environment(env)
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["DO_NOT_TRACK"] == "1"
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert env["VLLM_RPC_BASE_PATH"] == rpc_dir
    assert stat.S_IMODE(os.stat(rpc_dir).st_mode) == 0o700
    assert "CLOISTER_SECRET_X" not in env
    assert env["PATH"] == "/bin"
    os.rmdir(rpc_dir)


@pytest.mark.parametrize("flag", ["--enable-log-requests", "--enable-log-outputs=true"])
def test_request_logging_flags_are_refused(flag: str) -> None:
    with pytest.raises(EngineConfigError, match="refused"):
        ModelSpec("m", engine_args=(flag,)).cli_args()


def test_model_spec_builds_vllm_arguments() -> None:
    spec = ModelSpec("/models/x", "x", "pooling", ("--max-model-len", "512"))
    assert spec.cli_args() == ["--model", "/models/x", "--served-model-name", "x",
                               "--runner", "pooling", "--max-model-len", "512"]
