"""An EHBP client for the gateway (Tinfoil's encrypted HTTP body protocol).

Same surface as `OHTTPClient` (`request`, `stream`), so `cloister proxy --protocol ehbp`
serves the same local API. EHBP leaves method, path, status and headers in the clear
and has no authenticated end of stream (see `enclave/ehbp.py`); prefer OHTTP where the
choice is yours.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from enclave import ehbp
from enclave.errors import EnclaveCryptoError
from proxy.ohttp_client import (
    GatewayClientBase,
    GatewayRejected,
    GatewayResponseError,
    GatewayUnreachable,
    InnerResponse,
    InnerStream,
    UnknownGatewayKey,
    is_key_problem,
    outer_code,
)


class EHBPClient(GatewayClientBase):
    keys_path = ehbp.KEYS_PATH

    async def _send(self, method: str, path: str, body: bytes, *, stream: bool
                    ) -> tuple[httpx.Response, ehbp.RequestSealer]:
        for attempt in (0, 1):
            sealer = ehbp.RequestSealer(await self.key_config(refresh=attempt == 1))
            headers = {ehbp.ENCAPSULATED_KEY_HEADER: sealer.encapsulated_key_header,
                       "content-type": "application/json"}
            request = self._http.build_request(method, path, headers=headers,
                                               content=sealer.seal(body) if body else b"")
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc
            if ehbp.RESPONSE_NONCE_HEADER.lower() in response.headers:
                return response, sealer
            await response.aread()
            await response.aclose()
            if not (is_key_problem(response) and attempt == 0):
                if is_key_problem(response):
                    raise UnknownGatewayKey("the gateway rejected its own key configuration")
                raise GatewayRejected(f"the gateway refused the request ({outer_code(response)})",
                                      status=response.status_code)
        raise UnknownGatewayKey("the gateway rejected its own key configuration")

    async def request(self, method: str, path: str, body: bytes = b"") -> InnerResponse:
        response, sealer = await self._send(method, path, body, stream=False)
        try:
            opener = sealer.response_opener(response.headers[ehbp.RESPONSE_NONCE_HEADER])
            content = b"".join(opener.push(response.content))
            opener.finish()
        except EnclaveCryptoError as exc:
            raise GatewayResponseError("the gateway's response failed to open") from exc
        media = response.headers.get("content-type", "application/json")
        return InnerResponse(response.status_code, (("content-type", media),), content)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, body: bytes = b"") -> AsyncIterator[InnerStream]:
        response, sealer = await self._send(method, path, body, stream=True)
        try:
            try:
                opener = sealer.response_opener(response.headers[ehbp.RESPONSE_NONCE_HEADER])
            except EnclaveCryptoError as exc:
                raise GatewayResponseError("the gateway's response failed to open") from exc

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for data in response.aiter_raw():
                        for piece in opener.push(data):
                            yield piece
                    opener.finish()
                except EnclaveCryptoError as exc:
                    raise GatewayResponseError("the gateway's response failed to open") from exc

            media = response.headers.get("content-type", "application/json")
            yield InnerStream(response.status_code, (("content-type", media),), chunks)
        finally:
            await response.aclose()
