"""Side channels and replays against the real engine: answer sizes on the wire in every
dialect, a captured request sent again, and the prefix cache shared only within a
tenant."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.clients import PROTOCOLS
from tests.integration.conftest import RunningGateway, dialect_client

pytestmark = pytest.mark.engine

MODEL = "cloister-demo"
TOKEN_COUNTS = (1, 2, 4, 8, 16, 32, 64)


class Tap(httpx.AsyncBaseTransport):
    """Between client and gateway, on the real network: every request as sent and the
    size of each answer."""

    def __init__(self) -> None:
        # it stands where TLS ends (Atoma with accounts goes over the attested TLS):
        # what it sees is what the dialect itself seals
        self.inner = httpx.AsyncHTTPTransport(verify=False)
        self.sent: list[httpx.Request] = []
        self.sizes: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        request = httpx.Request(request.method, request.url, headers=request.headers,
                                content=body)
        self.sent.append(request)
        response = await self.inner.handle_async_request(request)
        content = b"".join([part async for part in response.aiter_raw()])  # type: ignore[attr-defined]
        self.sizes.append(len(content))
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=httpx.ByteStream(content))

    async def aclose(self) -> None:
        await self.inner.aclose()


def answered_ehbp_request(url: str) -> httpx.Request:
    """One sealed EHBP chat request, as it went on the wire to `url` and was answered
    200 there: what an attacker on the path captures to send again."""
    import asyncio

    from proxy.attestor import Unverified
    from proxy.dialects import make_client

    tap = Tap()
    client = make_client(url, "ehbp", attestation=Unverified(), transport=tap)

    async def once() -> int:
        body = json.dumps({"model": MODEL, "max_tokens": 2,
                           "messages": [{"role": "user", "content": "x"}]}).encode()
        try:
            return (await client.request("POST", "/v1/chat/completions", body)).status
        finally:
            await client.aclose()

    assert asyncio.run(once()) == 200
    return next(r for r in reversed(tap.sent) if r.method == "POST")


def replay_headers(captured: httpx.Request) -> dict[str, str]:
    return {k: v for k, v in captured.headers.items() if k not in ("content-length", "host")}


def _chat(tokens: int, prompt: str = "Tell me about the sea.") -> bytes:
    return json.dumps({"model": MODEL, "max_tokens": tokens, "ignore_eos": True,
                       "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
                      ).encode()


def _inference(tap: Tap) -> list[int]:
    return [tap.sizes[i] for i, r in enumerate(tap.sent)
            if r.method == "POST" and not r.url.path.endswith("/secrets")]


def _rejected(gateway: RunningGateway, reason: str) -> float:
    text = httpx.get(f"{gateway.metrics_url}/metrics").text
    line = f'cloister_rejected_requests_total{{reason="{reason}"}} '
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_answers_of_1_to_64_tokens_fall_in_three_sizes(gateway, protocol) -> None:
    tap = Tap()
    client = dialect_client(gateway, protocol, transport=tap)
    for tokens in TOKEN_COUNTS:
        answer = await client.request("POST", "/v1/chat/completions", _chat(tokens))
        assert answer.status == 200
        assert json.loads(answer.body)["usage"]["completion_tokens"] == tokens
    await client.aclose()
    sizes = _inference(tap)
    assert len(sizes) == len(TOKEN_COUNTS)
    assert len(set(sizes)) <= 3, sizes


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_captured_request_sent_again_never_reaches_the_engine(gateway, protocol) -> None:
    tap = Tap()
    client = dialect_client(gateway, protocol, transport=tap)
    assert (await client.request("POST", "/v1/chat/completions", _chat(2))).status == 200
    await client.aclose()
    captured = next(r for r in reversed(tap.sent)
                    if r.method == "POST" and not r.url.path.endswith("/secrets"))
    before = _rejected(gateway, "replayed_request")
    async with httpx.AsyncClient(timeout=60, verify=False) as attacker:
        replayed = await attacker.request(
            captured.method, str(captured.url), content=captured.content,
            headers={k: v for k, v in captured.headers.items()
                     if k not in ("content-length", "host")})
    assert replayed.status_code == (200 if protocol == "ohttp" else 409)  # OHTTP seals it
    assert _rejected(gateway, "replayed_request") == before + 1


def _cached_tokens(body: bytes) -> int:
    details = json.loads(body)["usage"].get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


async def test_the_prefix_cache_is_shared_within_a_tenant_only(gateway) -> None:
    """Two Continuum clients (two secrets: two tenants) send the same long prompt: the
    first tenant's second request hits the prefix cache, the other tenant's does not."""
    prompt = " ".join(f"Paragraph {i} of a long shared preamble." for i in range(60))
    alice = dialect_client(gateway, "continuum")
    bob = dialect_client(gateway, "continuum")
    first = await alice.request("POST", "/v1/chat/completions", _chat(1, prompt))
    again = await alice.request("POST", "/v1/chat/completions", _chat(1, prompt))
    other = await bob.request("POST", "/v1/chat/completions", _chat(1, prompt))
    for client in (alice, bob):
        await client.aclose()
    assert _cached_tokens(first.body) == 0
    assert _cached_tokens(again.body) > 0  # the same tenant reuses its prefix
    assert _cached_tokens(other.body) == 0  # another tenant's identical prompt does not
