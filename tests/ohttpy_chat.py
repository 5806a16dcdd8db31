"""A streamed chat through Microsoft's `ohttpy` (Azure's OHTTP convention), run as its own
process: its Rust core holds the GIL while it waits, so it cannot share a process with a
gateway served from a thread. Prints one JSON line; exit 0 when both answers came back,
3 when the client refused or failed.

    python -m tests.ohttpy_chat GATEWAY_URL MODEL
"""

from __future__ import annotations

import json
import sys

import httpx
import ohttpy


def chat(url: str, model: str) -> dict[str, object]:
    request = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(transport=ohttpy.Transport(), timeout=60) as http:
        whole = http.post(f"{url}/v1/chat/completions", json=request)
        if whole.status_code != 200:
            raise RuntimeError(f"whole answer: HTTP {whole.status_code}")
        content = whole.json()["choices"][0]["message"]["content"]
        with http.stream("POST", f"{url}/v1/chat/completions",
                         json={**request, "stream": True}) as answer:
            events = b"".join(answer.iter_bytes())
            if answer.status_code != 200:
                raise RuntimeError(f"streamed answer: HTTP {answer.status_code}")
    deltas = [json.loads(e[6:]) for e in events.split(b"\n\n") if e.startswith(b"data: {")]
    streamed = "".join(d["choices"][0]["delta"].get("content") or "" for d in deltas
                       if d["choices"])
    # the last event is [DONE] (a receipt after it is an SSE comment, which SSE skips)
    last = [e for e in events.split(b"\n\n") if e and not e.startswith(b":")][-1]
    return {"content": content, "streamed": streamed, "done": last == b"data: [DONE]"}


if __name__ == "__main__":
    try:
        print(json.dumps({"ok": True, **chat(*sys.argv[1:3])}))
    except Exception as error:  # noqa: BLE001 - whichever error the client raises, reported
        print(json.dumps({"ok": False, "error": type(error).__name__, "message": str(error)}))
        sys.exit(3)
