"""The metrics exposition checked by Prometheus's own linter (`promtool check metrics`,
Debian's `prometheus` package, installed by `scripts/setup-system.sh`), after traffic in
every dialect and a refusal, so every family has samples."""

from __future__ import annotations

import json
import shutil
import subprocess

from testkit.doubles import CHAT_MODEL
from tests.asgi import scrape
from tests.clients import PROTOCOLS, client_for
from tests.unit.conftest import running

CHAT = json.dumps({"model": CHAT_MODEL, "max_tokens": 2,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


async def test_promtool_finds_nothing_to_say_about_the_metrics(make_app) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool missing: run scripts/setup-system.sh"
    async with running(make_app()) as app:
        for protocol in PROTOCOLS:
            client = client_for(app, protocol)
            try:
                assert (await client.request("POST", "/v1/chat/completions", CHAT)).status == 200
                await client.request("POST", "/v1/chat/completions", json.dumps(
                    {"model": "no-such-model", "messages": []}).encode())  # refused
            finally:
                await client.aclose()
        text = await scrape(app)
    assert "cloister_requests_total" in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not checked.stdout.strip() and not checked.stderr.strip(), checked.stdout
