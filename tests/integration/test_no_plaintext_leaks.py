"""A canary through every dialect, successes and failures alike: it never appears in the
gateway's logs (its own, uvicorn's, vLLM's), in /metrics, or in any error body that
crosses the wire in plaintext."""

from __future__ import annotations

import json

import httpx
import pytest

from enclave.ohttp import ClientRequest, decode_key_configs
from enclave.ohttp.bhttp import Request, encode_request
from tests.clients import PROTOCOLS
from tests.integration.conftest import dialect_client

pytestmark = pytest.mark.engine

CANARY = "CANARY-91c7e2-confidential"


class Recording(httpx.AsyncBaseTransport):
    """Real HTTP to the gateway, keeping every answer's body."""

    def __init__(self) -> None:
        # it stands where TLS ends (Atoma with accounts goes over the attested TLS):
        # what it sees is what the dialect itself seals
        self.inner = httpx.AsyncHTTPTransport(verify=False)
        self.answers: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        await response.aclose()
        self.answers.append(body)
        headers = [(k, v) for k, v in response.headers.items()
                   if k not in ("content-length", "transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers,
                              stream=httpx.ByteStream(body))


def _chat(model: str = "cloister-demo", **extra) -> bytes:
    return json.dumps({"model": model, "max_tokens": 4, **extra,
                       "messages": [{"role": "user", "content": f"say {CANARY}"}]}).encode()


async def test_canary_leaves_no_trace(gateway) -> None:
    plaintext_errors: list[bytes] = []
    for protocol in PROTOCOLS:
        recording = Recording()
        client = dialect_client(gateway, protocol, transport=recording)
        try:
            ok = await client.request("POST", "/v1/chat/completions", _chat())
            assert ok.status == 200
            async with client.stream("POST", "/v1/chat/completions", _chat(stream=True)) as s:
                [c async for c in s.chunks()]
            bad_model = await client.request("POST", "/v1/chat/completions",
                                              _chat(model=f"model-{CANARY}"))
            assert bad_model.status == 404
            if protocol == "continuum":  # this dialect's error codes cross in plaintext
                plaintext_errors.append(json.dumps(json.loads(recording.answers[-1])["error"])
                                        .encode())
        finally:
            await client.aclose()

    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as raw:
        config = decode_key_configs((await raw.get("/.well-known/ohttp-gateway")).content)[0]
        inner = encode_request(Request("POST", "/v1/chat/completions",
                                       content=b'{"messages": "' + CANARY.encode()))
        sealed = ClientRequest(config, inner)
        r = await raw.post("/.well-known/ohttp-gateway", content=sealed.data,
                           headers={"content-type": "message/ohttp-req"})
        assert r.status_code == 200  # the inner error travels encrypted
        broken = bytearray(ClientRequest(config, inner).data)
        broken[-3] ^= 1
        for attempt in (bytes(broken), CANARY.encode()):
            r = await raw.post("/.well-known/ohttp-gateway", content=attempt,
                               headers={"content-type": "message/ohttp-req"})
            plaintext_errors.append(r.content)
        r = await raw.post("/v1/confidential/chat/completions",
                           json={"ciphertext": CANARY, "stream": True})
        plaintext_errors.append(r.content)
        r = await raw.post("/v1/secrets", json={"key_id": 0, "ciphertext": CANARY})
        plaintext_errors.append(r.content)
        assert (await raw.get("/metrics")).status_code == 404  # not on the public listener
        metrics = httpx.get(f"{gateway.metrics_url}/metrics").text

    assert all(b"error" in e for e in plaintext_errors)
    for body in plaintext_errors:
        assert CANARY.encode() not in body, body
    assert CANARY not in metrics
    assert "cloister_crypto_failures_total" in metrics
    log = gateway.log_path.read_text(errors="replace")
    assert '"event": "request"' in log  # the log was captured at all
    assert CANARY not in log
