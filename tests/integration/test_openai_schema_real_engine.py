"""OpenAI's OpenAPI document driven by schemathesis against the real gateway's decrypted
surface (its plaintext test listener, `--insecure-plaintext`) and its real vLLM engine:
what vLLM answers, and what the gateway answers in its place, in the document's shapes.

It runs `tests/contract/test_openai_schema.py` pointed at that listener, in a process of its
own: in the long-lived test process CPython 3.11.7's AST constructor sometimes reports a
recursion-depth mismatch while schemathesis compiles its generators (a SystemError from
`ast.parse`, seen twice in full runs, never in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import RunningGateway

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


def test_the_real_engine_answers_in_the_openai_document_s_shapes(
        gateway: RunningGateway) -> None:
    target = f"{gateway.url}/v1 cloister-demo all-MiniLM-L6-v2"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/contract/test_openai_schema.py"],
        cwd=ROOT, env={**os.environ, "CLOISTER_SCHEMA_TARGET": target},
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:]
    assert "4 passed" in done.stdout
