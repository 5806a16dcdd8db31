"""A small OHTTP client for the gateway: fetch keys, seal requests, open responses.

Thin I/O over `enclave.ohttp` (the same sans-IO code the gateway runs). Whole messages
use `message/ohttp-req`; streams use chunked OHTTP and yield each content chunk as soon
as it is opened. Anything wrong with what comes back, a tampered, reordered or
truncated stream included, raises `GatewayResponseError`; nothing unauthenticated is
ever returned as if it were the end of a response.

The upstream is an httpx transport, so tests can inject an in-process ASGI app.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from enclave.errors import EnclaveCryptoError
from enclave.ohttp import ChunkedRequestSealer, ClientRequest, KeyConfig, decode_key_configs
from enclave.ohttp.bhttp import (
    ContentChunk,
    Request,
    ResponseEnd,
    ResponseHead,
    StreamedResponseParser,
    decode_response,
    encode_request,
)
from enclave.ohttp.encapsulation import choose_suite
from enclave.ohttp.keyconfig import KeyConfigError
from enclave.ohttp.protocol import (
    CHUNKED_REQUEST_MEDIA_TYPE,
    CHUNKED_RESPONSE_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
)

WELL_KNOWN = "/.well-known/ohttp-gateway"
# Requests that take this long are streams of a long completion, not hung connections.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)

KeyVerifier = Callable[[list[KeyConfig]], Awaitable[None]]


class GatewayError(Exception):
    """The gateway could not be used; `code` is stable, the message safe to show."""

    code = "gateway_error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayUnreachable(GatewayError):
    code = "gateway_unreachable"


class GatewayRejected(GatewayError):
    """The gateway refused the encapsulated request (a plaintext outer error)."""

    code = "gateway_rejected"


class UnknownGatewayKey(GatewayError):
    """The gateway did not accept our key configuration even after a refetch."""

    code = "gateway_key_unavailable"


class GatewayResponseError(GatewayError):
    """The response failed to open: tampered, reordered, truncated or malformed."""

    code = "gateway_response_invalid"


@dataclass(frozen=True)
class InnerResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    content: bytes

    @property
    def content_type(self) -> str:
        return dict(self.headers).get("content-type", "application/json")


@dataclass
class InnerStream:
    """A streamed inner response: status and headers, then `chunks()`."""

    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: Callable[[], AsyncIterator[bytes]]


class GatewayClientBase:
    """What every dialect's client shares: a connection pool to one gateway, and the
    check (attestation) that must vouch for the gateway's keys before they are used."""

    keys_path = WELL_KNOWN

    def __init__(
        self,
        gateway_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        verify_keys: Any = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.gateway_url, transport=transport,
                                       timeout=timeout)
        self._verify_keys = verify_keys
        self._config: KeyConfig | None = None

    async def aclose(self) -> None:
        await self._http.aclose()
        closer = getattr(self._verify_keys, "aclose", None)
        if closer is not None:
            await closer()

    async def key_config(self, *, refresh: bool = False) -> KeyConfig:
        """The gateway's current key configuration (verified, if a verifier is set)."""
        if self._config is None or refresh:
            self._config = await fetch_key_config(self._http, self.keys_path,
                                                  self._verify_keys)
        return self._config


class OHTTPClient(GatewayClientBase):

    async def request(self, method: str, path: str, body: bytes = b"") -> InnerResponse:
        """One whole request and response (`message/ohttp-req`)."""
        inner = encode_request(_inner(method, path, body))
        for attempt in (0, 1):
            sealed = ClientRequest(await self.key_config(refresh=attempt == 1), inner)
            r = await self._post(sealed.data, REQUEST_MEDIA_TYPE)
            if is_key_problem(r) and attempt == 0:
                continue
            self._check_outer(r, RESPONSE_MEDIA_TYPE)
            try:
                resp = decode_response(sealed.open_response(r.content))
            except EnclaveCryptoError as exc:
                raise GatewayResponseError("the gateway's response failed to open") from exc
            return InnerResponse(resp.status, resp.headers, resp.content)
        raise UnknownGatewayKey("the gateway rejected its own key configuration")

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, body: bytes = b"") -> AsyncIterator[InnerStream]:
        """A chunked request whose response is opened chunk by chunk."""
        inner = encode_request(_inner(method, path, body), indeterminate=True)
        for attempt in (0, 1):
            sealer = ChunkedRequestSealer(await self.key_config(refresh=attempt == 1))
            wire = sealer.header + sealer.seal_chunk(inner) + sealer.seal_final(b"")
            request = self._http.build_request(
                "POST", WELL_KNOWN, content=wire,
                headers={"content-type": CHUNKED_REQUEST_MEDIA_TYPE})
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc
            try:
                if is_key_problem(response) and attempt == 0:
                    await response.aread()
                    continue
                if response.status_code != 200:
                    await response.aread()
                self._check_outer(response, CHUNKED_RESPONSE_MEDIA_TYPE)
                yield await _open_stream(response, sealer)
                return
            finally:
                await response.aclose()
        raise UnknownGatewayKey("the gateway rejected its own key configuration")

    async def _post(self, data: bytes, media_type: str) -> httpx.Response:
        try:
            return await self._http.post(WELL_KNOWN, content=data,
                                         headers={"content-type": media_type})
        except httpx.TransportError as exc:
            raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc

    @staticmethod
    def _check_outer(r: httpx.Response, media_type: str) -> None:
        if r.status_code != 200 or not r.headers.get("content-type", "").startswith(media_type):
            code = outer_code(r)
            raise GatewayRejected(f"the gateway refused the request ({code})",
                                  status=r.status_code)


async def fetch_key_config(http: httpx.AsyncClient, path: str, verify: KeyVerifier | None
                           ) -> KeyConfig:
    """Fetch `application/ohttp-keys` from `path`, keep the usable ones, verify them."""
    try:
        r = await http.get(path)
    except httpx.TransportError as exc:
        raise GatewayUnreachable(f"cannot reach {http.base_url}") from exc
    if r.status_code != 200:
        raise GatewayRejected("key configuration unavailable", status=r.status_code)
    try:
        configs = [c for c in decode_key_configs(r.content) if _usable(c)]
    except KeyConfigError as exc:
        raise GatewayResponseError("malformed key configuration") from exc
    if not configs:
        raise UnknownGatewayKey("the gateway offers no usable key configuration")
    if verify is not None:
        await verify(configs)
    return configs[0]


async def _open_stream(response: httpx.Response, sealer: ChunkedRequestSealer) -> InnerStream:
    """Read until the inner response head is known; the rest is read by `chunks()`."""
    opener = sealer.response_opener()
    parser = StreamedResponseParser()
    raw = response.aiter_raw()
    pending: list[bytes] = []

    def feed(plain: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for piece in plain:
            for event in parser.push(piece):
                if isinstance(event, ResponseHead):
                    heads.append(event)
                elif isinstance(event, ContentChunk):
                    out.append(event.data)
        return out

    heads: list[ResponseHead] = []
    try:
        async for data in raw:
            pending += feed(opener.push(data))
            if heads:
                break
        if not heads:
            pending += feed([opener.finish()])
            parser.finish()
    except EnclaveCryptoError as exc:
        raise GatewayResponseError("the gateway's response failed to open") from exc
    if not heads:
        raise GatewayResponseError("the gateway's response ended before its head")

    async def chunks() -> AsyncIterator[bytes]:
        try:
            for piece in pending:
                yield piece
            if parser.complete:
                return
            async for data in raw:
                for piece in feed(opener.push(data)):
                    yield piece
            for piece in feed([opener.finish()]):
                yield piece
            parser.finish()
        except EnclaveCryptoError as exc:
            raise GatewayResponseError("the gateway's response failed to open "
                                       "(tampered or truncated)") from exc

    return InnerStream(heads[0].status, heads[0].headers, chunks)


def _inner(method: str, path: str, body: bytes) -> Request:
    headers = (("content-type", "application/json"),) if body else ()
    return Request(method, path, "https", "cloister", headers, body)


def _usable(config: KeyConfig) -> bool:
    try:
        choose_suite(config)
    except EnclaveCryptoError:
        return False
    return True


def outer_code(r: httpx.Response) -> str:
    try:
        payload = json.loads(r.content)
        return str(payload.get("code") or payload["error"]["code"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {r.status_code}"


def is_key_problem(r: httpx.Response) -> bool:
    return r.status_code == 422 and outer_code(r) == "unknown_key"



__all__ = ["InnerResponse", "InnerStream", "OHTTPClient", "ResponseEnd"]
