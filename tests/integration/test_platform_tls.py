"""The Enclava platform API over attested TLS, with the real engine: `cloister attest
--write-cert` pins the certificate the report binds, and the official OpenAI SDK uses it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import ROOT, RunningGateway

pytestmark = pytest.mark.engine


def _cli(gateway: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOISTER_STATE": str(gateway.state_dir)}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def pinned(gateway: RunningGateway, tmp_path_factory) -> Path:
    cert = tmp_path_factory.mktemp("tls") / "gateway.pem"
    done = _cli(gateway, "attest", "--gateway", gateway.tls_url, *gateway.trust_args(),
                "--write-cert", str(cert))
    assert done.returncode == 0, done.stderr
    return cert


@pytest.fixture(scope="module")
def api_key(gateway: RunningGateway) -> str:
    done = _cli(gateway, "apikey", "create", "--name", "integration", "--budget-tokens",
                "100000")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[0]


def test_openai_sdk_over_pinned_tls(gateway, pinned, api_key) -> None:
    sdk = openai.OpenAI(base_url=f"{gateway.tls_url}/api/v1", api_key=api_key,
                        http_client=httpx.Client(verify=ssl.create_default_context(
                            cafile=str(pinned))))
    reply = sdk.chat.completions.create(model="cloister-demo", max_tokens=6, temperature=0.7,
                                        messages=[{"role": "user", "content": "hi"}],
                                        extra_body={"ignore_eos": True})
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    stream = sdk.chat.completions.create(model="cloister-demo", max_tokens=5, stream=True,
                                         messages=[{"role": "user", "content": "go"}],
                                         extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    emb = sdk.embeddings.create(model="all-MiniLM-L6-v2", input="confidential")
    assert len(emb.data[0].embedding) == 384


def test_unpinned_clients_and_plain_http_are_refused(gateway, api_key) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gateway.tls_url}/api/v1/models")  # nothing vouches for the cert
    r = httpx.get(f"{gateway.url}/api/v1/models", headers={"authorization": f"Bearer {api_key}"})
    assert r.status_code == 404  # the platform API exists only on the TLS listener


def test_attest_refuses_a_certificate_the_report_does_not_bind(gateway, tmp_path) -> None:
    done = _cli(gateway, "attest", "--gateway", gateway.url, *gateway.trust_args(),
                "--write-cert", str(tmp_path / "x.pem"))
    assert done.returncode == 1 and "https" in done.stderr
