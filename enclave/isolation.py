"""Keep the engine's processes away from the enclave's secrets, and unmeasured code
away from the enclave (DESIGN section 3).

vLLM starts an engine-core process and worker processes. They must not inherit keys,
must not phone home, and must not log requests. `spawn` gives each child a fresh
interpreter (nothing from the gateway's memory), the RPC sockets go to a private 0700
directory, and usage statistics are off.

The environment is part of what runs, so it is an allow-list (`refused_variables`): the
named variables below (a shell's and a container's basics, locale, caches, device
selection, thread counts), and vLLM's documented `VLLM_*` settings, which the workload
manifest records (`engine_settings`) so that they are measured. Anything else refuses the
start, naming the variable: whatever loads or steers code in the key-holding process
(`LD_PRELOAD`, `PYTHONPATH`, `OPENSSL_CONF` naming a provider module, `GCONV_PATH`,
`SSL_CERT_FILE`, vLLM plugins, Hugging Face switches, ...) among them, and also what
nobody has thought of yet. The engine's processes then get an explicit environment built
from the same list (`explicit_environment`), with the engine's forced settings on top.
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

# Named here so that the refusal says why; every name not allowed below is refused too.
# They load code, redirect imports, or reconfigure what vLLM loads or sends.
FORBIDDEN_VARIABLES = frozenset({
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_BIND_NOW", "PYTHONPATH", "PYTHONHOME",
    "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONBREAKPOINT", "PYTHONWARNINGS", "PYTHONINSPECT",
    "PYTHONPLATLIBDIR", "PYTHONEXECUTABLE", "VLLM_PLUGINS", "VLLM_LOGGING_CONFIG_PATH",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_USE_MODELSCOPE", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OPENSSL_CONF", "OPENSSL_MODULES", "OPENSSL_ENGINES",
    "GCONV_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "VLLM_TRUST_REMOTE_CODE",
})
# What the gateway and the engine may be started with besides vLLM's documented settings.
ALLOWED_VARIABLES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "SHLVL", "_", "HOSTNAME",
    "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "COLORTERM", "NO_COLOR", "XDG_CACHE_HOME",
    "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "DO_NOT_TRACK",
    "PYTHON_VERSION", "PYTHON_SHA256", "GPG_KEY",  # data the python base image sets
    "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CLOISTER_CACHE",
    "CLOISTER_STATE", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    # what systemd gives a service (deploy/cvm/cloister.service), and the two variables
    # that unit's command line is written with
    "INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID", "RUNTIME_DIRECTORY",
    "STATE_DIRECTORY", "CACHE_DIRECTORY", "LOGS_DIRECTORY", "CONFIGURATION_DIRECTORY",
    "CREDENTIALS_DIRECTORY", "MANAGERPID", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC",
    "CLOISTER_MODEL", "CLOISTER_METRICS_HOST",
})
# locale; what Kubernetes puts in every container (the API server's address; the pods
# turn the per-service links off: deploy/k8s, enableServiceLinks: false)
ALLOWED_PREFIXES = ("LC_", "KUBERNETES_SERVICE_", "KUBERNETES_PORT")
VLLM_PREFIX = "VLLM_"


def _documented_vllm_settings() -> frozenset[str]:
    """The `VLLM_*` variables vLLM documents (`vllm.envs`); imported only when one is set,
    after the check of everything else (importing it sets variables of its own)."""
    import vllm.envs

    return frozenset(n for n in vllm.envs.environment_variables if n.startswith(VLLM_PREFIX))


def refused_variables(env: Mapping[str, str]) -> list[str]:
    """The set variables that refuse the start, sorted: every one not allowed."""
    refused = [name for name in env if name in FORBIDDEN_VARIABLES or not (
        name in ALLOWED_VARIABLES or name.startswith(ALLOWED_PREFIXES)
        or name.startswith(VLLM_PREFIX))]
    vllm_names = [n for n in env if n.startswith(VLLM_PREFIX) and n not in FORBIDDEN_VARIABLES]
    if vllm_names:
        documented = _documented_vllm_settings()
        refused += [n for n in vllm_names if n not in documented]
    return sorted(refused)


def forbidden_variables(env: Mapping[str, str]) -> list[str]:
    """Of `refused_variables`, those known to load or steer code."""
    return sorted(name for name in env if name in FORBIDDEN_VARIABLES)


def environment_refusal(env: Mapping[str, str]) -> str | None:
    """Why a process started with `env` must not start, naming the variables; None when
    it may (`cloister serve`, `workload` and `keyholder` all ask this)."""
    forbidden = forbidden_variables(env)
    if forbidden:
        return f"{', '.join(forbidden)} is set (it injects code or redirects imports); unset it"
    refused = refused_variables(env)
    if refused:
        return (f"{', '.join(refused)} is set, and the environment is an allow-list "
                "(enclave/isolation.py: what is not on it could steer code); unset it")
    return None


def engine_settings(env: Mapping[str, str]) -> dict[str, str]:
    """What the manifest records of the engine's environment: the operator's `VLLM_*`
    settings (checked by `refused_variables`), with the forced ones on top."""
    chosen = {k: v for k, v in env.items()
              if k.startswith(VLLM_PREFIX) and k not in FORBIDDEN_VARIABLES}
    return dict(sorted({**chosen, **FORCED_ENV}.items()))


def explicit_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The allowed part of `env` for the engine's processes, with the engine's forced
    settings on top."""
    kept = {k: v for k, v in env.items() if k not in FORBIDDEN_VARIABLES and (
        k in ALLOWED_VARIABLES or k.startswith(ALLOWED_PREFIXES + (VLLM_PREFIX,)))}
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
