"""Engine configuration and process isolation (DESIGN section 3, issue 12): what the
operator may pass to vLLM, and what the engine's processes inherit."""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass

import pytest

from enclave.isolation import (
    engine_settings,
    explicit_environment,
    forbidden_variables,
    isolate_engine_environment,
    refused_variables,
)
from enclave.vllm_engine import EngineConfigError, ModelSpec, _normalized, check_engine_args


def test_isolation_gives_the_engine_an_explicit_environment() -> None:
    env = {"VLLM_NO_USAGE_STATS": "0", "CLOISTER_SECRET_X": "s3cret", "PATH": "/bin",
           "SOME_TOKEN": "t", "LC_ALL": "C", "VLLM_CPU_KVCACHE_SPACE": "4"}
    rpc_dir = isolate_engine_environment(env)
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["DO_NOT_TRACK"] == "1"
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert env["VLLM_RPC_BASE_PATH"] == rpc_dir
    assert stat.S_IMODE(os.stat(rpc_dir).st_mode) == 0o700
    assert "CLOISTER_SECRET_X" not in env and "SOME_TOKEN" not in env
    assert (env["PATH"], env["LC_ALL"], env["VLLM_CPU_KVCACHE_SPACE"]) == ("/bin", "C", "4")
    os.rmdir(rpc_dir)


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
                                  "LD_LIBRARY_PATH", "VLLM_PLUGINS", "PYTHONWARNINGS",
                                  "OPENSSL_CONF", "OPENSSL_MODULES", "GCONV_PATH",
                                  "SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_variables_that_inject_code_refuse_the_start(name: str) -> None:
    assert forbidden_variables({name: "x", "PATH": "/bin"}) == [name]
    assert refused_variables({name: "x", "PATH": "/bin"}) == [name]
    assert name not in explicit_environment({name: "x"})


def test_the_environment_is_an_allow_list_and_vllm_settings_are_measured() -> None:
    """Not a deny-list: what nobody listed is refused too; vLLM's documented settings are
    allowed, reach the engine, and are recorded in the manifest, so that they change the
    workload digest."""
    from gateway.workload import build_manifest

    env = {"PATH": "/bin", "LC_ALL": "C", "KUBERNETES_SERVICE_HOST": "10.0.0.1",
           "VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_ENGINE_READY_TIMEOUT_S": "30"}
    assert refused_variables(env) == []
    for unlisted in ("HF_TRUST_REMOTE_CODE", "VLLM_NOT_A_SETTING", "REQUESTS_CA_BUNDLE",
                     "NODE_OPTIONS", "MALLOC_CONF"):
        assert refused_variables({**env, unlisted: "x"}) == [unlisted]
    assert engine_settings(env)["VLLM_ENGINE_READY_TIMEOUT_S"] == "30"
    assert explicit_environment(env)["VLLM_ENGINE_READY_TIMEOUT_S"] == "30"
    assert engine_settings(env)["VLLM_NO_USAGE_STATS"] == "1"  # forced, whatever is set
    assert engine_settings({**env, "VLLM_NO_USAGE_STATS": "0"})["VLLM_NO_USAGE_STATS"] == "1"
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env, clear=True):
        one = build_manifest([], {})
    with mock.patch.dict(os.environ, {**env, "VLLM_ENGINE_READY_TIMEOUT_S": "31"},
                         clear=True):
        other = build_manifest([], {})
    assert one["engine"]["environment"] != other["engine"]["environment"]


@pytest.mark.parametrize("flag", [
    "--kv-events-config", "--logging-config", "--otlp-traces-endpoint",
    "--trust-remote-code", "--enable-log-requests", "--enable-log-outputs=true",
    "--tool-parser-plugin", "--worker-cls", "--chat-template", "--tokenizer", "--api-key",
    "--lora-modules", "-O3",
])
def test_engine_arguments_outside_the_allow_list_are_refused(flag: str) -> None:
    name = flag.split("=")[0]
    with pytest.raises(EngineConfigError,
                       match=f"engine argument not allowed inside the enclave: {name}$"):
        check_engine_args([flag, "value"])
    with pytest.raises(EngineConfigError):
        ModelSpec("m", engine_args=(flag,)).cli_args()


@pytest.mark.parametrize("args", [["--load-format", "pt"], ["--load-format=dummy"]])
def test_load_formats_that_unpickle_are_refused(args: list[str]) -> None:
    with pytest.raises(EngineConfigError, match="--load-format"):
        check_engine_args(args)


def test_sizes_parallelism_and_caching_are_allowed() -> None:
    check_engine_args(["--max-model-len", "8192", "--tensor-parallel-size=2",
                       "--enable-prefix-caching", "--dtype", "bfloat16",
                       "--load-format", "safetensors"])


def test_model_spec_builds_vllm_arguments() -> None:
    spec = ModelSpec("/models/x", "x", "pooling", ("--max-model-len", "512"))
    assert spec.cli_args() == ["--model", "/models/x", "--served-model-name", "x",
                               "--runner", "pooling", "--max-model-len", "512"]


class _Mode(enum.Enum):
    FAST = "fast"


@dataclass
class _Config:
    mode: _Mode
    sizes: set[int]


def test_engine_arguments_normalise_to_stable_json() -> None:
    value = {"b": _Config(_Mode.FAST, {3, 1}), "a": (1, 2.5), "c": object()}
    normal = _normalized(value)
    assert normal["a"] == [1, 2.5]
    assert normal["b"] == {"mode": "fast", "sizes": [1, 3]}
    assert list(normal) == ["a", "b", "c"]
    assert normal["c"] == "<builtins.object>"  # never a repr with a memory address


def test_the_cc_profile_sets_and_measures_its_engine_options() -> None:
    from enclave.vllm_engine import EngineConfigError, engine_arguments, with_cc_profile

    plain = engine_arguments(ModelSpec("/models/x", "x", "generate", ("--max-model-len", "512")))
    profiled = engine_arguments(ModelSpec("/models/x", "x", "generate",
                                          with_cc_profile(("--max-model-len", "512"))))
    assert (profiled["async_scheduling"], profiled["stream_interval"],
            profiled["cpu_offload_gb"], profiled["disable_custom_all_reduce"]) == \
        (True, 8, 0, True)
    assert profiled["max_model_len"] == 512 and plain != profiled  # measured: another digest
    later = engine_arguments(ModelSpec("/models/x", "x", "generate",
                                       with_cc_profile(("--stream-interval", "4"))))
    assert later["stream_interval"] == 4  # the operator's own interval wins
    for undoing in (("--cpu-offload-gb", "4"), ("--cpu-offload-gb=4",),
                    ("--no-async-scheduling",)):
        with pytest.raises(EngineConfigError, match="--cc-profile"):
            with_cc_profile(undoing)
