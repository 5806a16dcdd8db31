"""OpenAI's own OpenAPI document (the operations Cloister serves:
`tests/data/openai-openapi-subset.json`, made by `scripts/openai-openapi-subset.py`) as
schemathesis reads it, and the checks the schema tests run over every answer: no server
error, a documented media type, a 2xx body valid against the document's schema (streams
event by event), and any refusal in OpenAI's error shape (`ErrorResponse`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import schemathesis
from schemathesis import checks

from testkit.doubles import CHAT_MODEL, EMBEDDING_MODEL

DOCUMENT = Path(__file__).resolve().parent / "data" / "openai-openapi-subset.json"
MAX_TOKENS = 8


def load(chat_model: str = CHAT_MODEL, embedding_model: str = EMBEDDING_MODEL
         ) -> Any:
    """The document, generating requests for these models and for few tokens. The same
    examples every run (`derandomize` in the tests), and stack enough for the document's
    deep schemas: CPython 3.11 compiles the generators' patterns recursively and reports
    running out mid-way as a SystemError (seen once in a full run)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    schema = schemathesis.openapi.from_path(str(DOCUMENT))
    # The coverage phase adds a thousand boundary cases per run; fuzzing and the
    # document's own examples keep the suite's time in bounds.
    schema.config.phases.coverage.enabled = False

    @schema.hook
    def map_body(context: Any, body: Any) -> Any:
        """Any other model name is a 404, the same for every body; few tokens and
        choices keep a real engine quick."""
        if isinstance(body, dict) and "model" in body:
            path = context.operation.path
            body["model"] = embedding_model if path == "/embeddings" else chat_model
            if path != "/embeddings":
                body.setdefault("max_tokens", MAX_TOKENS)
                for cap in ("max_tokens", "max_completion_tokens"):
                    if isinstance(body.get(cap), int):
                        body[cap] = min(max(body[cap], 1), MAX_TOKENS)
                for many in ("n", "best_of"):
                    if isinstance(body.get(many), int):
                        body[many] = min(max(body[many], 1), 2)
        return body

    return schema


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable`, which the document still uses, as JSON Schema says it;
    and a property the document leaves optional may be null, as vLLM sends the ones it
    leaves unset (`function_call`, `annotations`, `completion_tokens_details`) and the
    OpenAI SDKs read null there as absent; and vLLM's chat logprobs object has no
    `refusal` list (the SDKs take it as absent too). Everything else is as the document
    says."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.get("required") == ["content", "refusal"] and "refusal" in node.get(
            "properties", {}) and "Log probability" in node.get("description", ""):
        node["required"] = ["content"]  # vLLM's logprobs carry no `refusal` list
    if isinstance(node.get("properties"), dict):  # vLLM's null for an unset optional field
        required = set(node.get("required", ()))
        node["properties"] = {k: v if k in required else {"anyOf": [v, {"type": "null"}]}
                              for k, v in node["properties"].items()}
    if node.pop("nullable", False):
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


RAW = json.loads(DOCUMENT.read_text())
COMPONENTS = _nullable(RAW["components"])


def _schema(ref: str) -> dict[str, Any]:
    return {"$ref": ref, "components": COMPONENTS}


def error_shape(ctx: Any, response: Any, case: Any) -> None:
    """A refusal is OpenAI's error object."""
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(f"HTTP {response.status_code} {response.headers} "
                                 f"{response.content[:200]!r}") from None
        jsonschema.validate(body, _schema("#/components/schemas/ErrorResponse"))


def document_shapes(ctx: Any, response: Any, case: Any) -> None:
    """A 2xx body valid against the document's schema for it (`_nullable`): JSON whole;
    a stream event by event against the document's `text/event-stream` schema (which
    describes each event's data)."""
    if response.status_code >= 300:
        return
    content = RAW["paths"][case.operation.path][case.method.lower()]["responses"]["200"][
        "content"]
    if "text/event-stream" not in response.headers.get("content-type", [""])[0]:
        jsonschema.validate(response.json(),
                            _schema(content["application/json"]["schema"]["$ref"]))
        return
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", events[-1:]
    for data in map(json.loads, events[:-1]):
        if "text/event-stream" in content:
            jsonschema.validate(data, _schema(content["text/event-stream"]["schema"]["$ref"]))
        else:  # /completions documents no stream: chunks are completion-like objects
            assert isinstance(data["choices"], list) and data["object"] == "text_completion"


CHECKS = [checks.not_a_server_error, checks.content_type_conformance, document_shapes,
          error_shape]
