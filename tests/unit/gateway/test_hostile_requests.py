"""Requests built to cost the gateway work before anything is authenticated: they get a
clear error, and nobody else waits for them."""

from __future__ import annotations

import asyncio

import httpx

from enclave.ohttp import ChunkedRequestSealer, decode_key_configs
from enclave.ohttp.bhttp import Request, encode_request
from enclave.ohttp.protocol import CHUNKED_REQUEST_MEDIA_TYPE
from gateway.app import create_app
from gateway.config import ServeConfig
from tests.unit.conftest import start

HOSTILE_SIZE = 1_250_000


def _one_byte_chunks_request(size: int) -> bytes:
    """An indeterminate-length Binary HTTP request whose content is `size / 2` one-byte
    chunks: cheap to send, and quadratic to decode for a parser that copies the rest of
    the message at every chunk."""
    head = encode_request(Request("POST", "/v1/chat/completions"), indeterminate=True)
    head = head[:-3]  # drop the empty content, its end and the trailer section end
    return head + b"\x01x" * (size // 2) + b"\x00\x00"


async def test_a_huge_request_of_one_byte_chunks_does_not_stall_health() -> None:
    from testkit.doubles import DeterministicTestEngine

    app = create_app(ServeConfig.of(), DeterministicTestEngine().running)
    async with app.router.lifespan_context(app):
        await start(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=120) as client:
            config = decode_key_configs((await client.get("/.well-known/ohttp-gateway"))
                                        .content)[0]
            sealer = ChunkedRequestSealer(config)
            inner = _one_byte_chunks_request(HOSTILE_SIZE)
            assert len(inner) >= HOSTILE_SIZE
            pieces = [inner[i:i + 65536] for i in range(0, len(inner), 65536)]
            wire = (sealer.header + b"".join(sealer.seal_chunk(p) for p in pieces)
                    + sealer.seal_final(b""))
            order: list[str] = []

            async def hostile() -> None:
                r = await client.post("/.well-known/ohttp-gateway", content=wire,
                                      headers={"content-type": CHUNKED_REQUEST_MEDIA_TYPE})
                order.append(f"hostile {r.status_code}")

            async def health() -> None:
                await asyncio.sleep(0)  # let the hostile request start first
                r = await client.get("/health")
                order.append(f"health {r.status_code}")

            await asyncio.gather(hostile(), health())
    assert order == ["health 200", "hostile 200"]
