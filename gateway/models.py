"""The models a gateway serves, as the workload manifest names them: a verified local
copy, its digest, and who signed it.

The digest is the one OpenSSF model signing (`model-signing`) puts in the subject of
what a publisher signs: SHA-256 over the SHA-256 of every file of the model folder, in
path order (weights, tokenizer, chat template, generation configuration, everything).
A model named by hub id is downloaded first and served from that local copy, so the
bytes hashed are the bytes loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization


class ModelRefused(Exception):
    """The model cannot be served as asked (missing, another digest, bad signature)."""


@dataclass(frozen=True)
class ModelIdentity:
    path: Path
    digest: str  # "sha256:<hex>"
    signer: str | None = None


def local_copy(name_or_path: str, *, download: Callable[[str], str] | None = None) -> Path:
    """A local folder for the model: the path itself, or a hub id downloaded first.
    Refused with the command that fetches or builds it when it is neither."""
    path = Path(name_or_path)
    if path.is_dir():
        return path.resolve()
    if _looks_like_path(name_or_path):
        raise ModelRefused(
            f"there is no model folder at {name_or_path}: `cloister demo-model "
            f"{name_or_path}` builds the offline demo model there, or `hf download "
            f"ORG/NAME --local-dir {name_or_path}` fetches one from the Hugging Face hub")
    if download is None:
        from huggingface_hub import snapshot_download

        def download(repo_id: str) -> str:
            return str(snapshot_download(repo_id=repo_id))
    try:
        return Path(download(name_or_path)).resolve()
    except Exception as exc:  # noqa: BLE001 - the hub's errors vary; say what we know
        folder = f"models/{name_or_path.rsplit('/', 1)[-1]}"
        raise ModelRefused(
            f"model {name_or_path!r} is neither a local folder nor downloadable here "
            f"({type(exc).__name__}): fetch it where the hub is reachable with `hf download "
            f"{name_or_path} --local-dir {folder}`, copy the folder here and serve it with "
            f"`--model {folder}` (or leave --model out for the built-in demo model)"
        ) from None


def _looks_like_path(name: str) -> bool:
    """A folder path rather than a hub id (`org/name` or `name`)."""
    return (name.startswith(("/", ".", "~")) or name.endswith("/") or name.count("/") > 1
            or "\\" in name)


def model_digest(path: Path) -> str:
    """`sha256:` and the digest model-signing computes for the folder."""
    import model_signing

    manifest = model_signing.hashing.hash(path)
    hasher = hashlib.sha256()
    for descriptor in manifest.resource_descriptors():
        hasher.update(descriptor.digest.digest_value)
    return f"sha256:{hasher.hexdigest()}"


def verify_signature(path: Path, signature: Path, *, public_key: Path | None = None,
                     certificate_chain: Sequence[Path] = ()) -> str:
    """Verify an OpenSSF model signature offline; the signer, for the manifest."""
    import model_signing

    config = model_signing.verifying.Config()
    if public_key is not None:
        config.use_elliptic_key_verifier(public_key=public_key)
        signer = f"key sha256:{_spki_fingerprint(public_key)}"
    elif certificate_chain:
        config.use_certificate_verifier(certificate_chain=list(certificate_chain))
        root = x509.load_pem_x509_certificates(Path(certificate_chain[-1]).read_bytes())[-1]
        signer = f"certificate chain to sha256:{_cert_fingerprint(root)}"
    else:
        raise ModelRefused("--model-signature needs --model-signing-key or "
                           "--model-signing-certificate-chain")
    try:
        config.verify(path, signature)
    except Exception as exc:  # noqa: BLE001 - model-signing raises plain errors
        raise ModelRefused(f"the model's signature does not verify ({type(exc).__name__})"
                           ) from None
    return signer


def identify(name_or_path: str, *, expected_digest: str | None = None,
             signature: Path | None = None, public_key: Path | None = None,
             certificate_chain: Sequence[Path] = ()) -> ModelIdentity:
    """The verified local copy of a model, its digest and signer; `ModelRefused` when it
    is not the model asked for."""
    path = local_copy(name_or_path)
    digest = model_digest(path)
    if expected_digest is not None and digest != expected_digest.lower():
        raise ModelRefused(f"the model's digest is {digest}, not the {expected_digest} "
                           "asked for")
    signer = None
    if signature is not None:
        signer = verify_signature(path, signature, public_key=public_key,
                                  certificate_chain=certificate_chain)
    return ModelIdentity(path, digest, signer)


def _spki_fingerprint(public_key_pem: Path) -> str:
    key = serialization.load_pem_public_key(public_key_pem.read_bytes())
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _cert_fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
