"""The offline demo model: a real Hugging Face checkpoint with head_dim 64 and a template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave.demo_model import build_demo_model, ensure_demo_model


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("demo") / "model")


def test_config_is_a_llama_with_head_dim_64(demo: Path) -> None:
    config = json.loads((demo / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["head_dim"] == 64
    assert (demo / "model.safetensors").stat().st_size > 1_000_000


def test_tokenizer_round_trips_any_text(demo: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo)
    for text in ["Hello, world!", "naïve café ☕ 日本語", "  spaces\tand\nnewlines "]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_chat_template_renders_roles_and_generation_prompt(demo: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo)
    text = tok.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        tokenize=False, add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start|>system\nbe brief<|end|>\n"
                    "<|start|>user\nhi<|end|>\n<|start|>assistant\n")


def test_build_is_deterministic(demo: Path, tmp_path: Path) -> None:
    again = build_demo_model(tmp_path / "again")
    for name in ["tokenizer.json", "model.safetensors", "config.json"]:
        assert (again / name).read_bytes() == (demo / name).read_bytes(), name


def test_ensure_reuses_the_cache(demo: Path) -> None:
    before = (demo / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_model(demo) == demo
    assert (demo / "model.safetensors").stat().st_mtime_ns == before
