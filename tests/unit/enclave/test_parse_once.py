"""The prompt is parsed once per request: the dialect that opens a request hands its
parsed JSON on (`InnerRequest.payload`), and every later step (route and JSON checks,
normalisation and the `--max-tokens` cap, gates, the cache salt, the engine's adapter)
reads that one value instead of parsing the bytes again. Counted on a prompt of about a
megabyte (EHBP's largest frame is 1 MiB) in every dialect: the `json.loads` calls made by
our code on a text that holds the prompt."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import httpx
import pytest

from enclave.dialect import InnerRequest
from testkit.doubles import CHAT_MODEL
from tests.clients import PROTOCOLS, client_for
from tests.unit.conftest import running

ROOT = Path(__file__).resolve().parents[3]
OURS = tuple(str(ROOT / package) for package in ("cli", "gateway", "enclave", "attestation",
                                                 "proxy"))
MARKER = "MARKER-parse-once"
# The double echoes the first words back (max_tokens 3): the marker stays in the prompt.
PROMPT = "a b " + "lorem ipsum " * 86_000 + MARKER


class PromptParses:
    """Counts our `json.loads` calls whose input holds the prompt."""

    def __init__(self, monkeypatch) -> None:
        self.sites: list[str] = []
        self.counting = False
        real = json.loads

        def loads(text, *args, **kwargs):
            if self.counting and MARKER in (text.decode("latin-1") if isinstance(
                    text, (bytes, bytearray)) else str(text)):
                caller = traceback.extract_stack(limit=2)[0]
                if caller.filename.startswith(OURS):
                    self.sites.append(f"{caller.filename}:{caller.lineno}")
            return real(text, *args, **kwargs)

        monkeypatch.setattr(json, "loads", loads)


@pytest.mark.parametrize("protocol", [*PROTOCOLS, "plaintext"])
async def test_a_1_mib_prompt_is_parsed_once(protocol, make_app, monkeypatch) -> None:
    parses = PromptParses(monkeypatch)
    app = make_app(insecure_plaintext=True, max_tokens=64)
    body = json.dumps({"model": CHAT_MODEL, "max_tokens": 3,
                       "messages": [{"role": "user", "content": PROMPT}]}).encode()
    assert len(body) > 1_000_000
    async with running(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                               base_url="http://gw") as http:
        if protocol == "plaintext":
            parses.counting = True
            answered = await http.post("/v1/chat/completions", content=body,
                                       headers={"content-type": "application/json"})
            parses.counting = False
            assert answered.status_code == 200, answered.text
        else:
            client = client_for(app, protocol)
            dialect = await client.dialect()  # keys fetched and verified first
            outer, opener = dialect.seal(InnerRequest("POST", "/v1/chat/completions", body),
                                         stream=False)
            parses.counting = True  # the gateway's side only, from here
            answered = await http.post(outer.path, content=outer.body,
                                       headers=dict(outer.headers))
            parses.counting = False
            assert answered.status_code == 200, answered.text
    assert len(parses.sites) == 1, parses.sites
