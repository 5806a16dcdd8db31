"""A Continuum client for the gateway, with the `OHTTPClient` surface.

Registers a 32-byte inference secret sealed to the attested HPKE key, seals the prompt
field of each request, and opens `choices` / `data` of each response and each streamed
chunk, checking sequence numbers and the final flag (a stream that reaches `[DONE]`
without the final message is truncated). `/v1/models` is plaintext in this dialect.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from enclave import continuum, sse
from enclave.errors import DecryptError
from proxy.ohttp_client import (
    GatewayClientBase,
    GatewayRejected,
    GatewayResponseError,
    GatewayUnreachable,
    InnerResponse,
    InnerStream,
    outer_code,
)

_JSON = (("content-type", "application/json"),)
# Register a new secret this long before the old one expires.
RENEW_MARGIN_SECONDS = 60


class ContinuumClient(GatewayClientBase):
    """Secrets are sealed to the OHTTP key configuration, which attestation vouches for."""

    _secret: tuple[str, bytes, int] | None = None

    async def _post_json(self, path: str, payload: Any, *, stream: bool = False
                         ) -> httpx.Response:
        request = self._http.build_request("POST", path, json=payload)
        try:
            return await self._http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc

    async def secret(self, *, renew: bool = False) -> tuple[str, bytes]:
        held = self._secret
        if held is None or renew or held[2] - time.time() < RENEW_MARGIN_SECONDS:
            config = await self.key_config(refresh=True)
            secret = os.urandom(continuum.SECRET_SIZE)
            r = await self._post_json("/v1/secrets", continuum.seal_secret(config, secret))
            if r.status_code != 200:
                raise GatewayRejected(f"secret registration refused ({outer_code(r)})",
                                      status=r.status_code)
            info = r.json()
            held = self._secret = (info["secret_id"], secret, int(info["expires_at"]))
        return held[0], held[1]

    async def _sealed(self, path: str, body: bytes, *, stream: bool
                      ) -> tuple[httpx.Response, continuum.FieldCipher]:
        field = continuum.PROMPT_FIELDS.get(path)
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise GatewayRejected("the request body is not JSON") from exc
        if field is None or field not in payload:
            raise GatewayRejected(f"{path} needs `{field}`")
        for attempt in (0, 1):
            cipher = continuum.FieldCipher.for_client(*await self.secret(renew=attempt == 1))
            sealed = {**payload, field: cipher.seal_request_field(
                field, json.dumps(payload[field]).encode())}
            response = await self._post_json(path, sealed, stream=stream)
            if response.status_code == 400 and attempt == 0:
                await response.aread()
                if outer_code(response) == "unknown_secret":
                    await response.aclose()
                    continue
            return response, cipher
        raise GatewayRejected("the gateway forgot two secrets in a row")

    async def request(self, method: str, path: str, body: bytes = b"") -> InnerResponse:
        if method == "GET":
            try:
                r = await self._http.get(path)
            except httpx.TransportError as exc:
                raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc
            return InnerResponse(r.status_code, _JSON, r.content)
        response, cipher = await self._sealed(path, body, stream=False)
        if response.status_code != 200:
            return InnerResponse(response.status_code, _JSON, response.content)
        field = continuum.RESULT_FIELDS[path]
        try:
            obj = response.json()
            obj[field] = json.loads(cipher.open_response(field, 0, obj.get(field), final=True))
        except (DecryptError, ValueError, AttributeError) as exc:
            raise GatewayResponseError("the gateway's response failed to open") from exc
        return InnerResponse(200, _JSON, json.dumps(obj).encode())

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, body: bytes = b"") -> AsyncIterator[InnerStream]:
        response, cipher = await self._sealed(path, body, stream=True)
        try:
            if response.status_code != 200:
                content = await response.aread()

                async def error() -> AsyncIterator[bytes]:
                    yield content

                yield InnerStream(response.status_code, _JSON, error)
                return
            field = continuum.RESULT_FIELDS[path]

            async def chunks() -> AsyncIterator[bytes]:
                reader, seq, final_seen = sse.EventReader(), 0, False
                async for data in response.aiter_raw():
                    for payload in reader.push(data):
                        if payload == sse.DONE:
                            if not final_seen:
                                raise GatewayResponseError("the stream is truncated")
                            yield sse.event(sse.DONE)
                            continue
                        if final_seen:
                            raise GatewayResponseError("data after the final message")
                        obj, final_seen = _open_chunk(cipher, field, seq, payload)
                        seq += 1
                        if not final_seen:
                            yield sse.event(json.dumps(obj).encode())
                if not final_seen:
                    raise GatewayResponseError("the stream is truncated")

            yield InnerStream(200, (("content-type", "text/event-stream"),), chunks)
        finally:
            await response.aclose()


def _open_chunk(cipher: continuum.FieldCipher, field: str, seq: int, payload: bytes
                ) -> tuple[dict[str, Any], bool]:
    """Open one chunk at `seq`: a regular message, or the final one (final flag set)."""
    try:
        obj = json.loads(payload)
        value = obj.get(field)
    except (ValueError, AttributeError) as exc:
        raise GatewayResponseError("a streamed chunk is malformed") from exc
    for final in (False, True):
        try:
            obj[field] = json.loads(cipher.open_response(field, seq, value, final=final))
        except DecryptError:
            continue
        return obj, final
    raise GatewayResponseError("a streamed chunk failed to open (tampered or reordered)")
