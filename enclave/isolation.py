"""Keep the engine's processes away from the enclave's secrets, and unmeasured code
away from the enclave (DESIGN section 3).

vLLM starts an engine-core process and worker processes. They must not inherit keys,
must not phone home, and must not log requests. `spawn` gives each child a fresh
interpreter (nothing from the gateway's memory), the RPC sockets go to a private 0700
directory, and usage statistics are off.

The environment is part of what runs: a variable that injects code or redirects imports
(`LD_PRELOAD`, `PYTHONPATH`, vLLM plugins, ...) refuses the start (`forbidden_variables`),
and the engine's processes get an explicit environment built from an allow-list
(`explicit_environment`), not the operator's. In a measured boot the gateway's own
environment is set by the measured image; this check stops the engine's children, which
start new interpreters, from being redirected, and says so loudly when someone tries.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, MutableMapping

# Settings forced on the engine, whatever the operator's environment says.
FORCED_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    # vLLM's loggers propagate to the gateway's JSON handler and its allow-list.
    "VLLM_CONFIGURE_LOGGING": "0",
}

# Variables that load code, redirect imports or reconfigure what vLLM loads or sends.
FORBIDDEN_VARIABLES = frozenset({
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_BIND_NOW", "PYTHONPATH", "PYTHONHOME",
    "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONBREAKPOINT", "PYTHONWARNINGS", "PYTHONINSPECT",
    "PYTHONPLATLIBDIR", "PYTHONEXECUTABLE", "VLLM_PLUGINS", "VLLM_LOGGING_CONFIG_PATH",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_USE_MODELSCOPE", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
})
# What the engine's processes get from the operator's environment: locale, paths to
# caches, device selection, thread counts. Everything else is dropped.
ALLOWED_VARIABLES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "TERM", "XDG_CACHE_HOME",
    "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CLOISTER_CACHE",
    "CLOISTER_STATE", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
})
ALLOWED_PREFIXES = ("LC_", "VLLM_CPU_")


def forbidden_variables(env: Mapping[str, str]) -> list[str]:
    """The set variables that refuse the start, sorted."""
    return sorted(name for name in env if name in FORBIDDEN_VARIABLES)


def explicit_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of `env`, with the engine's forced settings on top."""
    kept = {k: v for k, v in env.items()
            if k in ALLOWED_VARIABLES or k.startswith(ALLOWED_PREFIXES)}
    return {**kept, **FORCED_ENV}


def isolate_engine_environment(env: MutableMapping[str, str] | None = None) -> str:
    """Replace `env` (default: os.environ, which spawned processes inherit) with the
    explicit engine environment; returns the private RPC folder."""
    env = os.environ if env is None else env
    explicit = explicit_environment(env)
    rpc_dir = tempfile.mkdtemp(prefix="cloister-rpc-")
    os.chmod(rpc_dir, 0o700)
    explicit["VLLM_RPC_BASE_PATH"] = rpc_dir
    env.clear()
    env.update(explicit)
    return rpc_dir
