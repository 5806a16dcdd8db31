#!/usr/bin/env python3
"""The part of OpenAI's published OpenAPI document that Cloister serves, for the
schemathesis tests (tests/data/openai-openapi-subset.json): the operations below and
every component they reference, unchanged. Source: github.com/openai/openai-openapi
(MIT licence; the commit is recorded in the output's `x-source`).

    python scripts/openai-openapi-subset.py OPENAPI_JSON COMMIT \
        > tests/data/openai-openapi-subset.json
"""

import json
import sys

OPERATIONS = {"/chat/completions": "post", "/completions": "post", "/embeddings": "post",
              "/models": "get"}


def refs(node: object, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            found.add(ref)
        for value in node.values():
            refs(value, found)
    elif isinstance(node, list):
        for value in node:
            refs(value, found)


def main(path: str, commit: str) -> None:
    with open(path) as file:
        spec = json.load(file)
    paths = {p: {m: spec["paths"][p][m]} for p, m in OPERATIONS.items()}
    wanted: set[str] = set()
    refs(paths, wanted)
    done: set[str] = set()
    components: dict[str, dict[str, object]] = {}
    while wanted - done:
        ref = sorted(wanted - done)[0]
        done.add(ref)
        _, _, kind, name = ref.split("/", 3)
        node = spec["components"][kind][name]
        components.setdefault(kind, {})[name] = node
        refs(node, wanted)
    out = {"openapi": spec["openapi"], "info": spec["info"], "servers": spec["servers"],
           "x-source": {"repository": "https://github.com/openai/openai-openapi",
                        "commit": commit, "file": "openapi.json", "licence": "MIT"},
           "paths": paths, "components": components}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
