"""The platform run without a shell in the enclave, against the real engine and the real
database file: the operator administers through `cloister admin` (attested, pinned TLS,
signed requests), tenants use the OpenAI SDK, budgets hold under concurrency and
disconnects, and the operator's edits to the database are refused."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import ROOT, RunningGateway
from tests.waiting import wait_until

pytestmark = pytest.mark.engine
MODEL = "cloister-demo"


def _cli(gateway: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOISTER_STATE": str(gateway.state_dir / "client")}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _admin(gateway: RunningGateway, *args: str) -> dict:
    done = _cli(gateway, "admin", "--gateway", gateway.tls_url, "--key",
                str(gateway.admin_key), *gateway.trust_args(), *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def tenant(gateway: RunningGateway, tmp_path_factory) -> dict:
    """An account, a key with a budget and a chatbot, made through the admin API only."""
    account = _admin(gateway, "accounts", "create", "acme")
    key = _admin(gateway, "keys", "create", "--account", account["id"], "--name", "team",
                 "--budget-tokens", "3000")
    bot = _admin(gateway, "chatbots", "create", "--account", account["id"], "--name",
                 "helper", "--model", MODEL, "--system-prompt", "You are terse.")
    cert = tmp_path_factory.mktemp("pinned") / "gateway.pem"
    done = _cli(gateway, "attest", "--gateway", gateway.tls_url, *gateway.trust_args(),
                "--write-cert", str(cert))
    assert done.returncode == 0, done.stderr
    return {"account": account, "key": key, "bot": bot, "cert": cert}


def _tls(tenant: dict) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tenant["cert"]))


def _usage(gateway: RunningGateway, tenant: dict) -> dict:
    r = httpx.get(f"{gateway.tls_url}/api/v1/usage", verify=_tls(tenant),
                  headers={"authorization": f"Bearer {tenant['key']['key']}"})
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def test_the_admin_refuses_a_gateway_that_pins_another_admin(gateway, tmp_path) -> None:
    other = tmp_path / "other.key"
    assert _cli(gateway, "admin", "keygen", "--out", str(other)).returncode == 0
    done = _cli(gateway, "admin", "--gateway", gateway.tls_url, "--key", str(other),
                *gateway.trust_args(), "accounts", "list")
    assert done.returncode == 1 and "does not pin this admin key" in done.stderr


def test_a_tenant_uses_the_sdk_and_budgets_hold_under_concurrency(gateway, tenant) -> None:
    before = _usage(gateway, tenant)
    sdk = openai.AsyncOpenAI(base_url=f"{gateway.tls_url}/api/v1",
                             api_key=tenant["key"]["key"], max_retries=0,
                             http_client=httpx.AsyncClient(verify=_tls(tenant)))

    async def one() -> int | None:
        try:
            reply = await sdk.chat.completions.create(
                model=MODEL, max_tokens=40, messages=[{"role": "user", "content": "hi"}],
                extra_body={"ignore_eos": True})
        except openai.APIStatusError as exc:
            assert exc.status_code == 402
            return None
        assert reply.usage is not None
        return reply.usage.total_tokens

    async def all_at_once() -> list[int | None]:
        try:
            return await asyncio.gather(*[one() for _ in range(20)])
        finally:
            await sdk.close()

    spent = asyncio.run(all_at_once())
    served = [t for t in spent if t is not None]
    after = _usage(gateway, tenant)
    assert served and len(served) < 20  # the budget let some run and refused the rest
    assert after["total_tokens"] - before["total_tokens"] == sum(served)
    assert after["total_tokens"] <= 3000


def test_a_stream_cut_short_is_charged_what_the_engine_generated(gateway, tenant) -> None:
    before = _usage(gateway, tenant)["total_tokens"]
    body = {"model": MODEL, "max_tokens": 400, "stream": "true", "ignore_eos": True,
            "messages": [{"role": "user", "content": "go on"}]}
    seen = []
    with httpx.Client(verify=_tls(tenant), timeout=60) as client, client.stream(
            "POST", f"{gateway.tls_url}/api/v1/chat/completions", json=body,
            headers={"authorization": f"Bearer {tenant['key']['key']}"}) as r:
        assert r.status_code == 200  # `stream: "true"` is a stream, and metered
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen.append(json.loads(line[6:]))
            if len(seen) >= 6:
                break
    wait_until(lambda: _usage(gateway, tenant)["total_tokens"], lambda t: t != before,
               interval=0.2)
    charged = _usage(gateway, tenant)["total_tokens"] - before
    last = seen[-1]["usage"]["total_tokens"]
    assert last <= charged < 400  # at least what we were sent, far less than asked


def _db(gateway: RunningGateway) -> Path:
    return gateway.state_dir / "platform-v2.db"


def test_the_operators_edits_to_the_database_file_are_refused(gateway, tenant) -> None:
    # A key of its own: what the budget tests before it left of theirs depends on how
    # many tokens the engine made before it saw a cut stream, so it may not pay for a chat.
    own = _admin(gateway, "keys", "create", "--account", tenant["account"]["id"],
                 "--name", "edited", "--budget-tokens", "3000")
    bot, key = tenant["bot"], own["key"]
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(verify=_tls(tenant), timeout=60, headers=headers) as client:
        url = f"{gateway.tls_url}/api/v1/chatbot/external/{bot['id']}/chat"
        first = client.post(url, json={"message": "my secret is 42"})
        assert first.status_code == 200, first.text
        conversation = first.json()["conversation_id"]
        with sqlite3.connect(_db(gateway)) as db:  # the operator makes it a system message
            db.execute("UPDATE messages SET role = 'system' WHERE conversation_id = ? "
                       "AND position = 0", (conversation,))
        r = client.post(url, json={"message": "again", "conversation_id": conversation})
        assert (r.status_code, r.json()["error"]["code"]) == (500, "stored_state_invalid")
        with sqlite3.connect(_db(gateway)) as db:  # and lifts the budget
            db.execute("UPDATE api_keys SET budget_tokens = 999999999 WHERE id = ?",
                       (own["id"],))
        r = client.get(f"{gateway.tls_url}/api/v1/budget/status")
        assert (r.status_code, r.json()["error"]["code"]) == (500, "stored_state_invalid")
