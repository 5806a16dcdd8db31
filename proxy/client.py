"""One client for every dialect: I/O around the dialects' sans-IO client sides.

`GatewayClient` owns what all dialects share: a connection pool to one gateway, getting
keys (or a secret) the attestation report vouches for, retrying once when the gateway
says they are stale (decided by the error's type, `StaleCredentials`), mapping transport
errors, and reading answers whole or chunk by chunk into the dialect's opener, which
refuses anything the gateway did not authenticate. A dialect's part is its sans-IO
`KeyDiscovery` (`enclave.dialect`): where its keys are published and which bound keys
vouch for them; `discover` and `ready` here are the one driver of its I/O.

The upstream is an httpx transport, so tests can inject an in-process ASGI app.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from enclave.dialect import (
    ClientDialect,
    InnerHead,
    InnerRequest,
    InnerResponse,
    KeyDiscovery,
    Opener,
    OuterRequest,
    OuterResponse,
    Registration,
)
from enclave.errors import AnswerRefused, StaleCredentials, UnauthenticatedAnswer
from enclave.padding import DEFAULT_PADDING, PaddingPolicy, strip, strip_events
from enclave.route_hint import RouteHint
from proxy.attestor import Attestation
from proxy.errors import (
    CredentialInClear,
    GatewayKeyUnavailable,
    GatewayResponseInvalid,
    GatewayUnreachable,
    from_refused,
)
from proxy.pinning import attested_certificate, is_https, pinned_context

# Requests that take this long are streams of a long completion, not hung connections.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's


async def _ask(http: httpx.AsyncClient, request: OuterRequest,
               extra: tuple[tuple[str, str], ...] = ()) -> OuterResponse:
    r = await http.request(request.method, request.path, content=request.body,
                           headers={**dict(request.headers), **dict(extra)})
    return OuterResponse(r.status_code, tuple(r.headers.items()), r.content)


async def discover(http: httpx.AsyncClient, keys: KeyDiscovery) -> object:
    """The gateway's current keys (a candidate), not yet trusted."""
    for index, request in enumerate(keys.lookups()):
        candidate = keys.candidate(index, await _ask(http, request))
        if candidate is not None:
            return candidate
    raise UnauthenticatedAnswer(f"the gateway publishes no {keys.name} keys")


async def ready(http: httpx.AsyncClient, keys: KeyDiscovery, candidate: object, *,
                route: tuple[tuple[str, str], ...] = ()) -> ClientDialect:
    """After verification: the client side, registering first where the dialect must
    (with `route`, the routing hint of the request that asked, so that a balancer hashing
    on it takes the registration to the replica that request goes to)."""
    step = keys.ready(candidate)
    if isinstance(step, Registration):
        return step.finish(await _ask(http, step.request, route))
    return step


@dataclass(frozen=True)
class InnerStream:
    """A streamed answer: its authenticated head, then `chunks()`."""

    status: int
    content_type: str
    chunks: Callable[[], AsyncIterator[bytes]]

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (("content-type", self.content_type),)


def _once(content: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        if content:
            yield content
    return gen


class GatewayClient:
    def __init__(self, gateway_url: str, keys: KeyDiscovery, *, attestation: Attestation,
                 transport: httpx.AsyncBaseTransport | None = None,
                 timeout: httpx.Timeout = DEFAULT_TIMEOUT,
                 limits: httpx.Limits = DEFAULT_LIMITS,
                 padding: PaddingPolicy = DEFAULT_PADDING,
                 route_hint: RouteHint | None = None) -> None:
        """Request bodies are padded under `padding` (`enclave.padding`) before they are
        sealed; answers are passed on without the gateway's padding. `transport`: an
        in-process app, or connections the caller vouches for (nothing is pinned on
        them); else the client connects itself, within `limits`. `route_hint`: this
        user's, sent beside the ciphertext for a balancer (`enclave.route_hint`)."""
        self.gateway_url = gateway_url.rstrip("/")
        self._route_hint = route_hint
        self._padding = padding
        self.keys = keys
        self.attestation = attestation
        self._timeout, self._limits = timeout, limits
        # A credential travels only over TLS the report binds: until the report is
        # verified, the connection (for keys, which vouch for nothing) trusts no one's
        # certificate and carries no credential. In process (`transport`) nothing crosses
        # a wire.
        self._pins = keys.credential and transport is None
        if self._pins and not is_https(self.gateway_url):
            raise CredentialInClear(
                "a platform API key is sent only over the gateway's attested TLS listener: "
                "use its https:// URL")
        self._http = httpx.AsyncClient(base_url=self.gateway_url, transport=transport,
                                       timeout=timeout, limits=limits, verify=not self._pins)
        self._pinned: bytes | None = None  # the TLS key the pinned connection trusts
        self._retired: list[httpx.AsyncClient] = []
        self._dialect: ClientDialect | None = None
        self._renewing = asyncio.Lock()

    async def aclose(self) -> None:
        for http in (self._http, *self._retired):
            await http.aclose()
        await self.attestation.aclose()

    async def _pin(self) -> None:
        """After verification: requests go over a connection that trusts exactly the TLS
        certificate the report binds (`proxy.pinning`); the one before is kept for the
        requests still under way on it and closed with the client."""
        claims = self.attestation.last
        attested = claims.keys.get("tls-spki-sha256") if claims is not None else None
        if attested is not None and attested == self._pinned:
            return
        pem = await attested_certificate(self.gateway_url, attested)
        self._retired.append(self._http)
        self._http = httpx.AsyncClient(base_url=self.gateway_url, timeout=self._timeout,
                                       limits=self._limits, verify=pinned_context(pem))
        self._pinned = attested

    def gateways(self) -> list[GatewayClient]:
        return [self]

    def _stale(self, dialect: ClientDialect | None) -> bool:
        return (dialect is None or self.keys.expired(dialect) or self.attestation.due())

    async def dialect(self, *, refresh: bool = False,
                      route: tuple[tuple[str, str], ...] = ()) -> ClientDialect:
        """The dialect's client side over keys the attestation report vouches for; keys
        and attestation are renewed once for all concurrent requests, and requests
        already under way keep the dialect they started with."""
        current = self._dialect
        if not refresh and not self._stale(current):
            assert current is not None
            return current
        async with self._renewing:
            if self._dialect is not current or not (refresh or self._stale(self._dialect)):
                assert self._dialect is not None
                return self._dialect  # another request renewed it while we waited
            try:
                candidate = await discover(self._http, self.keys)
                await self.attestation.verify(lambda claims: self.keys.vouched(candidate,
                                                                               claims.keys))
                if self._pins:
                    await self._pin()
                self._dialect = await ready(self._http, self.keys, candidate, route=route)
            except httpx.TransportError as exc:
                raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc
            except AnswerRefused as exc:
                raise from_refused(exc) from exc
            return self._dialect

    def _route(self, path: str, body: bytes) -> tuple[tuple[str, str], ...]:
        return () if self._route_hint is None else self._route_hint.header(path, body)

    async def _send(self, outer: OuterRequest, route: tuple[tuple[str, str], ...], *,
                    stream: bool) -> httpx.Response:
        headers = {**dict(outer.headers), **dict(route)}
        request = self._http.build_request(outer.method, outer.path, content=outer.body,
                                           headers=headers)
        try:
            return await self._http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc

    async def request(self, method: str, path: str, body: bytes = b"") -> InnerResponse:
        """One whole request and its authenticated answer."""
        if method == "GET" and path == "/v1/models" and not self.keys.sealed_models:
            return await self._plain_models()
        route = self._route(path, body)
        for attempt in (0, 1):
            dialect = await self.dialect(refresh=attempt == 1, route=route)
            inner = self._padding.pad_request(InnerRequest(method, path, body))
            outer, opener = dialect.seal(inner, stream=False)
            r = await self._send(outer, route, stream=False)
            try:
                return strip(opener.whole(_outer(r, r.content)))
            except StaleCredentials:
                if attempt == 0:
                    continue
                raise GatewayKeyUnavailable("the gateway rejected its own keys") from None
            except AnswerRefused as exc:
                raise from_refused(exc) from exc
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, body: bytes = b""
                     ) -> AsyncIterator[InnerStream]:
        """A request whose answer is opened chunk by chunk as it arrives."""
        route = self._route(path, body)
        for attempt in (0, 1):
            dialect = await self.dialect(refresh=attempt == 1, route=route)
            inner = self._padding.pad_request(InnerRequest(method, path, body))
            outer, opener = dialect.seal(inner, stream=True)
            response = await self._send(outer, route, stream=True)
            try:
                if not opener.begin(response.status_code, _headers(response)):
                    try:
                        whole = strip(opener.whole(_outer(response, await response.aread())))
                    except StaleCredentials:
                        if attempt == 0:
                            continue
                        raise GatewayKeyUnavailable("the gateway rejected its own keys"
                                                    ) from None
                    except AnswerRefused as exc:
                        raise from_refused(exc) from exc
                    yield InnerStream(whole.status, whole.content_type, _once(whole.body))
                    return
                yield await _open_stream(response, opener)
                return
            finally:
                await response.aclose()

    async def _plain_models(self) -> InnerResponse:
        try:
            r = await self._http.get("/v1/models")
        except httpx.TransportError as exc:
            raise GatewayUnreachable(f"cannot reach {self.gateway_url}") from exc
        try:
            models = r.json()
            ok = r.status_code == 200 and isinstance(models.get("data"), list)
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise GatewayResponseInvalid("the gateway's model list is malformed",
                                         outer_status=r.status_code)
        return InnerResponse(200, "application/json", r.content)


def _headers(response: httpx.Response) -> tuple[tuple[str, str], ...]:
    return tuple((k.lower(), v) for k, v in response.headers.items())


def _outer(response: httpx.Response, body: bytes) -> OuterResponse:
    return OuterResponse(response.status_code, _headers(response), body)


async def _open_stream(response: httpx.Response, opener: Opener) -> InnerStream:
    """Read until the inner head is known; `chunks()` reads the rest."""
    raw = response.aiter_raw()
    pending: list[bytes] = []
    head: InnerHead | None = None
    ended = False

    def take(events: list[InnerHead | bytes]) -> None:
        nonlocal head
        for event in events:
            if isinstance(event, InnerHead):
                head = event
            else:
                pending.append(event)

    try:
        async for data in raw:
            take(opener.push(data))
            if head is not None:
                break
        else:
            take(opener.push(b""))
            if head is None:
                take(opener.finish())
                ended = True
    except AnswerRefused as exc:
        raise from_refused(exc) from exc
    except httpx.TransportError as exc:
        raise GatewayUnreachable("the gateway went away mid-answer") from exc
    if head is None:
        raise GatewayResponseInvalid("the gateway's answer ended before its head")

    async def chunks() -> AsyncIterator[bytes]:
        try:
            for piece in pending:
                if (unpadded := strip_events(piece)):
                    yield unpadded
            if ended:
                return
            async for data in raw:
                for event in opener.push(data):
                    if isinstance(event, bytes) and (unpadded := strip_events(event)):
                        yield unpadded
            for event in opener.finish():
                if isinstance(event, bytes) and (unpadded := strip_events(event)):
                    yield unpadded
        except AnswerRefused as exc:
            raise from_refused(exc) from exc
        except httpx.TransportError as exc:
            raise GatewayUnreachable("the gateway went away mid-answer") from exc

    return InnerStream(head.status, head.content_type, chunks)

