"""An in-process client: what `cloister proxy` does, as an httpx transport, with no proxy
process. The same code verifies the gateway (reference values, a fresh nonce, the keys
the report binds, re-attestation when due or when the keys expire) and seals every
request in the chosen dialect (`proxy.app.forward`); nothing is sent before the gateway
is verified, and no answer is passed on that the gateway did not authenticate.

    from proxy.transport import openai_client
    client = openai_client("https://gateway.example", release_keys=["release.pub"])
    client.chat.completions.create(model="latest", messages=[...])

or, for any httpx-based client, `httpx.Client(transport=CloisterTransport.connect(...))`
(sync) and `httpx.AsyncClient(transport=AsyncCloisterTransport.connect(...))` (async);
the client's base URL is `GATEWAY/v1`, its host is not used: the transport talks to the
gateway it was made for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from proxy.app import LocalAnswer, ModelResolver, UpstreamClient, forward
from proxy.attestor import REATTEST_SECONDS, Attestor
from proxy.bundle import WITNESS_MAX_AGE, WitnessConfig
from proxy.dialects import make_client, route_hint_for
from proxy.errors import ProxyError
from proxy.logview import KeptLogs
from proxy.receipts import ReceiptLog
from proxy.trust import StatementLog, default_state_dir, load_trust

T = TypeVar("T")
API_PREFIX = "/v1/"


class NoReferenceValues(ProxyError):
    code = "no_reference_values"


def verified_client(gateway_url: str, *, protocol: str = "ohttp",
                    release_keys: Sequence[Path | str] = (), policy: Path | str | None = None,
                    simulated_roots: Path | str | None = None, api_key: str | None = None,
                    state_dir: Path | None = None, report_mode: str = "challenge",
                    reattest_seconds: float = REATTEST_SECONDS,
                    witnesses: Sequence[str] = (),
                    witness_max_age: int = WITNESS_MAX_AGE,
                    route_hint: str = "auto") -> UpstreamClient:
    """A gateway client that verifies exactly as `cloister proxy` does; refused (fail
    closed) when nothing names the right measurement and workload."""
    trust = load_trust(release_keys=[Path(k) for k in release_keys],
                       policy=Path(policy) if policy else None,
                       simulated_roots=Path(simulated_roots) if simulated_roots else None)
    if not trust.has_reference_values:
        raise NoReferenceValues("no reference values: pass release_keys (the keys your "
                                "gateway's operator signs releases with) or a policy")
    # The report vouches for itself (a credential goes only over TLS it binds).
    folder = state_dir or default_state_dir()
    attestation = Attestor(gateway_url, trust=trust, statements=StatementLog(folder),
                           report_mode=report_mode, reattest_seconds=reattest_seconds,
                           tls_verify=False, logs=KeptLogs(folder),
                           witnesses=[WitnessConfig.parse(w) for w in witnesses],
                           witness_max_age=witness_max_age)
    return make_client(gateway_url, protocol, attestation=attestation, api_key=api_key,
                       keep_receipt=ReceiptLog(folder).keeper(gateway_url),
                       route_hint=route_hint_for(route_hint, protocol, folder, api_key=api_key))


def _inner_path(url: httpx.URL) -> str:
    path = url.path
    at = path.find(API_PREFIX)
    return path[at:] if at >= 0 else path


def _response(answer: LocalAnswer, stream: httpx.SyncByteStream | httpx.AsyncByteStream | None
              ) -> httpx.Response:
    headers = {"content-type": answer.content_type}
    if stream is None:
        return httpx.Response(answer.status, headers=headers, content=answer.body)
    return httpx.Response(answer.status, headers=headers, stream=stream)


class _AsyncChunks(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class AsyncCloisterTransport(httpx.AsyncBaseTransport):
    """For `httpx.AsyncClient` (and `openai.AsyncOpenAI`)."""

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client
        self._models = ModelResolver(client)

    @classmethod
    def connect(cls, gateway_url: str, **options: Any) -> AsyncCloisterTransport:
        """Options as `verified_client`'s."""
        return cls(verified_client(gateway_url, **options))

    async def answer(self, method: str, url: httpx.URL, body: bytes) -> LocalAnswer:
        return await forward(self._client, self._models, method, _inner_path(url), body)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = await self.answer(request.method, request.url, await request.aread())
        return _response(answer, _AsyncChunks(answer.chunks()) if answer.streamed else None)

    async def aclose(self) -> None:
        await self._client.aclose()


async def _next(chunks: AsyncIterator[bytes]) -> bytes:
    return await anext(chunks)


class _SyncChunks(httpx.SyncByteStream):
    def __init__(self, transport: CloisterTransport, chunks: AsyncIterator[bytes]) -> None:
        self._transport, self._chunks = transport, chunks

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self._transport.run(_next(self._chunks))
            except StopAsyncIteration:
                return

    def close(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            self._transport.run(aclose())  # the upstream stream, and its connection


class CloisterTransport(httpx.BaseTransport):
    """For `httpx.Client` (and `openai.OpenAI`): the async client runs on an event loop
    of its own, in a daemon thread, for the transport's lifetime."""

    def __init__(self, client: UpstreamClient) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="cloister-transport")
        self._thread.start()
        self._async = AsyncCloisterTransport(client)

    @classmethod
    def connect(cls, gateway_url: str, **options: Any) -> CloisterTransport:
        """Options as `verified_client`'s."""
        return cls(verified_client(gateway_url, **options))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.run(self._async.answer(request.method, request.url, request.read()))
        return _response(answer, _SyncChunks(self, answer.chunks()) if answer.streamed
                         else None)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.run(self._async.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def openai_client(gateway_url: str, **options: Any) -> Any:
    """`openai.OpenAI` over a `CloisterTransport` (needs the `openai` package). Options as
    `verified_client`'s; the API key, where the dialect needs one, is `api_key`."""
    import openai

    transport = CloisterTransport.connect(gateway_url, **options)
    return openai.OpenAI(base_url=f"{gateway_url.rstrip('/')}/v1",
                         api_key=options.get("api_key") or "unused",
                         # openai types it as its own httpx2.Client; it takes httpx's too
                         http_client=httpx.Client(transport=transport, timeout=600),  # type: ignore[arg-type]
                         )
