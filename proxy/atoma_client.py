"""An Atoma confidential-envelope client for the gateway, with the `OHTTPClient` surface.

Each request gets its own X25519 key and salt (`enclave.atoma.ClientSession`); every
response, and every streamed chunk, is decrypted and its BLAKE2b hash and the node's
Sui Ed25519 signature checked against the node keys the attestation report vouches for.
`/v1/models` is plaintext in this dialect. The seed's stream has no authenticated end:
a stream without `data: [DONE]` is reported as truncated, but an injected `[DONE]`
cannot be told from a real one (prefer OHTTP where the choice is yours).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from enclave import atoma, sse
from enclave.errors import DecryptError
from proxy.ohttp_client import (
    DEFAULT_TIMEOUT,
    GatewayClientBase,
    GatewayRejected,
    GatewayResponseError,
    GatewayUnreachable,
    InnerResponse,
    InnerStream,
)

NodeVerifier = Callable[[bytes, bytes], Awaitable[None]]
_JSON = (("content-type", "application/json"),)


class AtomaClient(GatewayClientBase):
    def __init__(self, gateway_url: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 verify_node: NodeVerifier | None = None,
                 timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        super().__init__(gateway_url, transport=transport, verify_keys=verify_node,
                         timeout=timeout)
        self._node: tuple[bytes, bytes] | None = None

    async def node_keys(self, *, refresh: bool = False) -> tuple[bytes, bytes]:
        if self._node is None or refresh:
            r = await self._get("/v1/confidential/node")
            try:
                info = r.json()
                keys = (atoma._b64(info, "node_dh_public_key", 32),
                        atoma._b64(info, "signing_public_key", 32))
            except (ValueError, atoma.InvalidBody) as exc:
                raise GatewayResponseError("malformed node keys") from exc
            if self._verify_keys is not None:
                await self._verify_keys(*keys)
            self._node = keys
        return self._node

    async def _get(self, path: str) -> httpx.Response:
        try:
            r = await self._http.get(path)
        except httpx.TransportError as exc:
            raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc
        if r.status_code != 200:
            raise GatewayRejected(f"{path} answered {r.status_code}", status=r.status_code)
        return r

    async def _post(self, path: str, body: bytes, *, stream: bool
                    ) -> tuple[httpx.Response, atoma.ClientSession]:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise GatewayRejected("the request body is not JSON") from exc
        for attempt in (0, 1):
            session = atoma.ClientSession(*await self.node_keys(refresh=attempt == 1))
            envelope = session.seal_request(body, model_name=str(payload.get("model", "")),
                                            stream=stream)
            request = self._http.build_request("POST", "/v1/confidential" + path.removeprefix(
                "/v1"), json=envelope)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc
            if response.status_code == 400 and attempt == 0:
                await response.aread()
                if b"not current" in response.content:
                    await response.aclose()
                    continue
            return response, session
        raise GatewayRejected("the node keys changed twice in a row")

    async def request(self, method: str, path: str, body: bytes = b"") -> InnerResponse:
        if method == "GET":
            r = await self._get(path)
            return InnerResponse(r.status_code, _JSON, r.content)
        response, session = await self._post(path, body, stream=False)
        if response.status_code != 200 and "ciphertext" not in response.text:
            return InnerResponse(response.status_code, _JSON, response.content)
        try:
            content = session.open_response(response.json())
        except (DecryptError, ValueError) as exc:
            raise GatewayResponseError("the gateway's response failed to open") from exc
        return InnerResponse(response.status_code, _JSON, content)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, body: bytes = b"") -> AsyncIterator[InnerStream]:
        response, session = await self._post(path, body, stream=True)
        try:
            if response.status_code != 200:
                content = await response.aread()
                yield InnerStream(response.status_code, _JSON, _once(content))
                return

            async def chunks() -> AsyncIterator[bytes]:
                reader, done = sse.EventReader(), False
                async for data in response.aiter_raw():
                    for payload in reader.push(data):
                        if payload == sse.DONE:
                            done = True
                            yield sse.event(sse.DONE)
                            continue
                        try:
                            plain = session.open_response(json.loads(payload))
                        except (DecryptError, ValueError) as exc:
                            raise GatewayResponseError("a streamed chunk failed to open") from exc
                        yield sse.event(plain)
                if not done or reader.pending.strip():
                    raise GatewayResponseError("the stream ended without [DONE] (truncated)")

            yield InnerStream(200, (("content-type", "text/event-stream"),), chunks)
        finally:
            await response.aclose()


def _once(content: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        yield content
    return gen
