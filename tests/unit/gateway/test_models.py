"""Models as the workload names them: model-signing's digest, a pinned digest, and an
OpenSSF model signature verified offline before anything is served."""

from __future__ import annotations

import json
from pathlib import Path

import model_signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.models import ModelRefused, identify, model_digest


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 64}')
    (folder / "model.safetensors").write_bytes(b"\x01" * 4096)
    (folder / "tokenizer.json").write_text('{"vocab": {}}')
    return folder


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "signer.key", tmp_path / "signer.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _sign(model: Path, private: Path, out: Path) -> Path:
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).sign(model, out)
    return out


def test_the_digest_is_the_one_publishers_sign(model, signing_key, tmp_path) -> None:
    signature = _sign(model, signing_key[0], tmp_path / "model.sig")
    bundle = json.loads(signature.read_text())
    payload = json.loads(__import__("base64").b64decode(bundle["dsseEnvelope"]["payload"]))
    assert model_digest(model) == "sha256:" + payload["subject"][0]["digest"]["sha256"]


def test_any_changed_file_changes_the_digest(model) -> None:
    before = model_digest(model)
    (model / "model.safetensors").write_bytes(b"\x02" * 4096)  # same name, other weights
    assert model_digest(model) != before


def test_a_pinned_digest_refuses_other_weights(model) -> None:
    digest = model_digest(model)
    assert identify(str(model), expected_digest=digest).digest == digest
    (model / "tokenizer.json").write_text('{"vocab": {"x": 1}}')
    with pytest.raises(ModelRefused, match="digest"):
        identify(str(model), expected_digest=digest)


def test_a_signed_model_names_its_signer(model, signing_key, tmp_path) -> None:
    signature = _sign(model, signing_key[0], tmp_path / "model.sig")
    identity = identify(str(model), signature=signature, public_key=signing_key[1])
    assert identity.signer is not None and identity.signer.startswith("key sha256:")


def test_a_bad_signature_or_a_changed_model_is_refused(model, signing_key, tmp_path) -> None:
    signature = _sign(model, signing_key[0], tmp_path / "model.sig")
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(other.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ModelRefused, match="signature"):
        identify(str(model), signature=signature, public_key=stranger)
    (model / "config.json").write_text('{"hidden_size": 128}')
    with pytest.raises(ModelRefused, match="signature"):
        identify(str(model), signature=signature, public_key=signing_key[1])
    with pytest.raises(ModelRefused, match="needs"):
        identify(str(model), signature=signature)


def test_a_name_that_is_neither_a_folder_nor_downloadable_is_refused(tmp_path) -> None:
    def no_hub(repo_id: str) -> str:
        raise OSError("no network")

    from gateway.models import local_copy

    with pytest.raises(ModelRefused, match="neither") as refused:
        local_copy("org/absent-model", download=no_hub)
    # The refusal names the command that fetches it and the flag that serves the copy.
    assert "`hf download org/absent-model --local-dir models/absent-model`" in str(refused.value)
    assert "--model models/absent-model" in str(refused.value)
    assert local_copy("org/model", download=lambda _: str(tmp_path)) == tmp_path.resolve()


def test_a_missing_model_folder_is_refused_with_the_command_that_builds_it(tmp_path) -> None:
    from gateway.models import local_copy

    def hub_never_asked(repo_id: str) -> str:
        raise AssertionError(f"a folder path went to the hub: {repo_id}")

    missing = tmp_path / "models" / "tiny"
    with pytest.raises(ModelRefused, match="no model folder") as refused:
        local_copy(str(missing), download=hub_never_asked)
    assert f"`cloister demo-model {missing}`" in str(refused.value)
    for relative in ("./models/tiny", "models/a/b", "~/m"):
        with pytest.raises(ModelRefused, match="no model folder"):
            local_copy(relative, download=hub_never_asked)
