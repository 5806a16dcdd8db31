"""The routing hint: equal for one user's requests that share a cacheable prefix,
unrelated across users, and computed from nothing a balancer could guess."""

from __future__ import annotations

import json
import os

from enclave.route_hint import WELL_FORMED, RouteHint, user_key

SYSTEM = {"role": "system", "content": "You answer questions about the tax code. " * 10}


def chat(*messages: dict[str, str], model: str = "m") -> bytes:
    return json.dumps({"model": model, "messages": list(messages), "stream": True}).encode()


def ask(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_one_users_requests_with_one_prefix_share_a_hint() -> None:
    alice = RouteHint(user_key(b"sk-alice"))
    first = alice.hint("/v1/chat/completions", chat(SYSTEM, ask("What is VAT?")))
    second = alice.hint("/v1/chat/completions", chat(SYSTEM, ask("And income tax?")))
    assert first is not None and first == second
    assert WELL_FORMED.match(first)
    # the key order, spacing and other fields of the JSON do not matter (JCS)
    reordered = json.dumps({"stream": False, "messages": [SYSTEM, ask("x")], "model": "m"},
                           indent=2).encode()
    assert alice.hint("/v1/chat/completions", reordered) == first


def test_hints_differ_across_users_prefixes_models_and_paths() -> None:
    alice, bob = RouteHint(user_key(b"sk-alice")), RouteHint(user_key(b"sk-bob"))
    body = chat(SYSTEM, ask("What is VAT?"))
    hint = alice.hint("/v1/chat/completions", body)
    assert bob.hint("/v1/chat/completions", body) != hint
    other_system = {"role": "system", "content": "You write poems."}
    assert alice.hint("/v1/chat/completions", chat(other_system, ask("What is VAT?"))) != hint
    assert alice.hint("/v1/chat/completions", chat(SYSTEM, ask("?"), model="n")) != hint
    assert alice.hint("/v1/completions", body) != hint


def test_only_the_first_kib_of_the_prefix_counts() -> None:
    alice = RouteHint(user_key(os.urandom(32)))
    long = "a" * 2000
    one = alice.hint("/v1/completions", json.dumps({"model": "m", "prompt": long}).encode())
    two = alice.hint("/v1/completions",
                     json.dumps({"model": "m", "prompt": long + "b"}).encode())
    three = alice.hint("/v1/completions",
                       json.dumps({"model": "m", "prompt": "b" + long}).encode())
    assert one == two != three


def test_no_hint_where_no_prefix_cache_applies() -> None:
    alice = RouteHint(user_key(b"k"))
    for body in (b"not json", b"[1, 2]", json.dumps({"input": "embed me"}).encode(),
                 json.dumps({"model": "m", "prompt": float("nan")}).encode()):
        assert alice.hint("/v1/embeddings", body) is None
        assert alice.header("/v1/embeddings", body) == ()
