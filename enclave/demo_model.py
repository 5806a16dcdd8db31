"""The offline demo model: a tiny random-weight Llama with a locally trained tokenizer.

It writes nonsense, and says so in its name, but every part of the serving path is real:
vLLM loads it like any Hugging Face checkpoint, applies its chat template, tokenizes with
its byte-level BPE tokenizer and samples from its logits. It exists so that a machine with
no network (CI, a laptop on a plane) can run the whole gateway.

The build is deterministic: the same Python, `tokenizers` and `torch` give the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEMO_MODEL_NAME = "cloister-demo-tiny-llama"
# Bump when the layout below changes so that stale caches are rebuilt.
DEMO_MODEL_VERSION = 2  # 2: the corpus no longer depends on what the process imported

# Shape: the CPU attention kernels reject head_dim 16; 64 is the smallest that works.
HIDDEN_SIZE = 256
NUM_HEADS = 4  # head_dim = 256 / 4 = 64
NUM_KV_HEADS = 2
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 512
VOCAB_SIZE = 4096
MAX_POSITIONS = 4096

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
TURN_START = "<|start|>"
TURN_END = "<|end|>"
SPECIAL_TOKENS = [BOS, EOS, TURN_START, TURN_END]

# Each message is `<|start|>role\ncontent<|end|>\n`; generation starts after the
# assistant header. String content and OpenAI content-part lists both render.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant\\n' }}{% endif %}"
)

# Local training text: docstrings of standard-library modules, present on every Python.
_CORPUS_MODULES = (
    "abc", "argparse", "asyncio", "base64", "collections", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "email", "enum", "fractions", "functools", "hashlib", "heapq",
    "hmac", "html", "http", "itertools", "json", "logging", "math", "os", "pathlib", "pickle",
    "queue", "random", "re", "secrets", "shutil", "socket", "sqlite3", "statistics", "string",
    "struct", "subprocess", "tempfile", "textwrap", "threading", "time", "unittest", "urllib",
    "uuid", "zipfile",
)


def default_cache_dir() -> Path:
    """Where `cloister serve` keeps the demo model: $CLOISTER_CACHE or ~/.cache/cloister."""
    base = os.environ.get("CLOISTER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cloister"
    )
    return Path(base) / f"{DEMO_MODEL_NAME}-v{DEMO_MODEL_VERSION}"


def _corpus() -> list[str]:
    """The training text, read in a fresh interpreter without site-packages: a module's
    attributes depend on what else the process imported, and the demo model must come
    out byte for byte the same wherever it is built (its digest is in the workload)."""
    code = (f"import importlib, inspect, json, warnings\n"
            f"warnings.simplefilter('ignore')\nnames = {_CORPUS_MODULES!r}\n"
            "texts = []\n"
            "for name in names:\n"
            "    module = importlib.import_module(name)\n"
            "    members = [m for _, m in sorted(vars(module).items()) if callable(m)]\n"
            "    texts += [inspect.getdoc(module), *(inspect.getdoc(m) for m in members)]\n"
            "print(json.dumps([t for t in texts if t]))\n")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True,
                            capture_output=True, text=True, env={"PYTHONHASHSEED": "0"})
    texts: list[str] = json.loads(result.stdout)
    texts.append("The quick brown fox jumps over the lazy dog. Hello! How are you today?")
    return texts


def _train_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=[TURN_START, TURN_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )
    fast.save_pretrained(out)


def _write_weights(out: Path, *, vocab_size: int, bos_id: int, eos_ids: list[int]) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HIDDEN_SIZE // NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids).save_pretrained(out)


def build_demo_model(path: Path | str) -> Path:
    """Build the demo model into `path` (created; replaced atomically if present)."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=target.parent))
    try:
        _train_tokenizer(staging)
        vocab = json.loads((staging / "tokenizer.json").read_text())["model"]["vocab"]
        added = json.loads((staging / "tokenizer.json").read_text())["added_tokens"]
        ids = {t["content"]: t["id"] for t in added}
        vocab_size = max([*vocab.values(), *ids.values()]) + 1
        _write_weights(
            staging, vocab_size=vocab_size, bos_id=ids[BOS], eos_ids=[ids[EOS], ids[TURN_END]]
        )
        (staging / "CLOISTER_DEMO_MODEL").write_text(
            "Random weights: this model writes nonsense. It exists to exercise the "
            "serving path offline.\n"
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def ensure_demo_model(cache_dir: Path | None = None) -> Path:
    """Return the cached demo model, building it on first use."""
    target = cache_dir or default_cache_dir()
    if (target / "CLOISTER_DEMO_MODEL").exists():
        return target
    return build_demo_model(target)
