"""Every dialect's client against the real gateway and engine: tampering and truncation
are detected where the dialect can detect them, and a wrong key is rejected."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx
import pytest

from enclave import atoma, ehbp
from enclave.keys import KeyRing
from proxy.errors import GatewayResponseInvalid
from tests.clients import PROTOCOLS
from tests.integration.conftest import dialect_client

pytestmark = pytest.mark.engine

CHAT = {"model": "cloister-demo", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6, "ignore_eos": True}
# EHBP has no authenticated end of stream: a cut at a frame boundary is undetectable.
TRUNCATION_DETECTED = ["ohttp", "atoma", "continuum"]


class Damaging(httpx.AsyncBaseTransport):
    """Real HTTP to the gateway, with `damage` applied to streamed response bodies (over
    TLS too: it stands where TLS ends, so it trusts any certificate)."""

    def __init__(self, damage: Callable[[bytes], bytes]) -> None:
        self.inner = httpx.AsyncHTTPTransport(verify=False)
        self.damage = damage

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        await response.aclose()
        if request.method == "POST" and response.status_code == 200 and len(body) > 200:
            body = self.damage(body)
        headers = [(k, v) for k, v in response.headers.items()
                   if k not in ("content-length", "transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers,
                              stream=httpx.ByteStream(body))


def flip_middle(body: bytes) -> bytes:
    """One bit flipped in the middle of what the answer seals: the longest run of
    ciphertext where the dialect writes it as text (Atoma base64, Continuum hex; their
    other fields and padding are in the clear by the seeds' design), else the middle."""
    runs = list(re.finditer(rb"[A-Za-z0-9+/]{64,}", body))
    if runs:
        longest = max(runs, key=lambda m: m.end() - m.start())
        middle = (longest.start() + longest.end()) // 2
    else:
        middle = len(body) // 2
    out = bytearray(body)
    out[middle] ^= 0x01
    return bytes(out)


def truncate(body: bytes) -> bytes:
    return body[: len(body) * 2 // 3]


async def _stream_all(client, body: bytes) -> list[bytes]:
    async with client.stream("POST", "/v1/chat/completions", body) as s:
        return [c async for c in s.chunks()]


@pytest.mark.parametrize("name", PROTOCOLS)
async def test_streamed_and_whole_chat_open_cleanly(gateway, name) -> None:
    client = dialect_client(gateway, name)
    try:
        whole = await client.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
        assert json.loads(whole.body)["usage"]["completion_tokens"] == 6
        chunks = await _stream_all(client, json.dumps({**CHAT, "stream": True}).encode())
        joined = b"".join(chunks)
        assert joined.endswith(b"data: [DONE]\n\n") and joined.count(b"data: ") >= 3
    finally:
        await client.aclose()


@pytest.mark.parametrize("name", PROTOCOLS)
async def test_tampered_stream_is_detected(gateway, name) -> None:
    client = dialect_client(gateway, name, transport=Damaging(flip_middle))
    try:
        with pytest.raises(GatewayResponseInvalid):
            await _stream_all(client, json.dumps({**CHAT, "stream": True}).encode())
    finally:
        await client.aclose()


@pytest.mark.parametrize("name", TRUNCATION_DETECTED)
async def test_truncated_stream_is_detected(gateway, name) -> None:
    client = dialect_client(gateway, name, transport=Damaging(truncate))
    try:
        with pytest.raises(GatewayResponseInvalid):
            await _stream_all(client, json.dumps({**CHAT, "stream": True}).encode())
    finally:
        await client.aclose()


async def test_wrong_key_is_rejected_by_the_real_gateway(gateway) -> None:
    stranger = ehbp.RequestSealer(ehbp.key_config(KeyRing().current()))
    async with httpx.AsyncClient(base_url=gateway.url) as raw:
        r = await raw.post("/v1/chat/completions", content=stranger.seal(json.dumps(CHAT).encode()),
                           headers={ehbp.ENCAPSULATED_KEY_HEADER:
                                    stranger.encapsulated_key_header})
        assert (r.status_code, r.json()["type"]) == (422, ehbp.KEY_CONFIG_PROBLEM_TYPE)
        session = atoma.ClientSession(KeyRing().current().public_key, b"\x00" * 32)
        envelope = session.seal_request(json.dumps(CHAT).encode(), model_name="cloister-demo",
                                        stream=False)
        # With accounts, Atoma is served on the attested TLS listener only (a raw
        # request: the key travels there, its certificate unchecked by this test).
        async with httpx.AsyncClient(base_url=gateway.url_for("atoma"), verify=False) as tls:
            r = await tls.post("/v1/confidential/chat/completions", json=envelope,
                               headers={"authorization": f"Bearer {gateway.api_key}"})
        error = r.json()["error"]
        assert (r.status_code, error["type"], error["code"]) == (400, "InvalidBody",
                                                                 "unknown_key")
        assert (await raw.get("/health")).status_code == 200
