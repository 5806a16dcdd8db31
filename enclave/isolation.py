"""Keep the engine's processes away from the enclave's secrets (DESIGN section 3).

vLLM starts an engine-core process and worker processes. They must not inherit keys,
must not phone home, and must not log requests. `spawn` gives each child a fresh
interpreter (nothing from the gateway's memory), the RPC sockets go to a private 0700
directory, and usage statistics are off.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import MutableMapping

# Settings forced on the engine, whatever the operator's environment says.
FORCED_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    # vLLM's loggers propagate to the gateway's JSON handler and its allow-list.
    "VLLM_CONFIGURE_LOGGING": "0",
}

# Environment variables that must never reach a child process: anything that could
# hold a secret of ours. Our own secrets live only in memory; this is belt and braces.
_SECRET_ENV_PREFIXES = ("CLOISTER_SECRET", "CLOISTER_DATA_KEY")


def isolate_engine_environment(env: MutableMapping[str, str] | None = None) -> str:
    """Prepare `env` (default: os.environ) for starting the engine; returns the RPC dir."""
    env = os.environ if env is None else env
    env.update(FORCED_ENV)
    rpc_dir = tempfile.mkdtemp(prefix="cloister-rpc-")
    os.chmod(rpc_dir, 0o700)
    env["VLLM_RPC_BASE_PATH"] = rpc_dir
    for name in [n for n in env if n.startswith(_SECRET_ENV_PREFIXES)]:
        del env[name]
    return rpc_dir
