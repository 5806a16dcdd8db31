"""The one engine endpoint: every dialect's requests take the same path.

    admit  ->  read the body (bounded in size and time)  ->  choose the dialect and open
    (in a worker thread when large)  ->  refuse what the engine must not see  ->  gate
    (the platform API's keys and budgets)  ->  refuse a replay (only a request that
    passed every check is recorded)  ->  call the engine  ->  answer whole, or relay the
    stream (coalesced on a timer)  ->  observer.finish(usage, completed), always

Every plaintext the responder seals is padded (`enclave.padding`).

A refusal before the request is opened is unsealed and in the dialect's own shape; from
then on every answer, errors included, leaves through the dialect's responder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from enclave import sse
from enclave.dialect import (
    InnerRequest,
    OuterRequest,
    OuterResponse,
    Responder,
    ServerDialect,
    StreamStart,
)
from enclave.engine import CHAT, COMPLETIONS, ENGINE_ROUTES, EngineRequest, EngineResponse
from enclave.errors import RequestRefused, SealedRefusal
from enclave.padding import PaddingPolicy, padded
from enclave.receipts import CarriesReceipts, ReceiptIssuer
from enclave.replay import ReplayGuard
from enclave.wire_errors import ErrorCode, error_json, normalize_engine_error
from gateway import sampling
from gateway.body import payload_object, read_body
from gateway.coalesce import coalesced
from gateway.context import RequestContext
from gateway.engine_call import ClientGone, EngineCall
from gateway.engine_slot import EngineSlot
from gateway.errors import GatewayError
from gateway.limits import Admission, UntrustedForwarding, client_key
from gateway.metrics import GatewayMetrics

log = structlog.get_logger("cloister.gateway")

# Bodies up to this size are opened on the event loop (a few hundred microseconds);
# larger ones in a worker thread, so that one big request never stalls the others.
INLINE_OPEN_BYTES = 64 * 1024
# Large bodies opened at once: each holds a thread and its buffers.
MAX_CONCURRENT_OPENS = 4


class Observer(Protocol):
    """Told how every engine request ended, whatever the path (disconnects included)."""

    wants_usage: bool

    async def finish(self, usage: dict[str, Any] | None, completed: bool) -> None: ...


class NoObserver:
    wants_usage = False

    async def finish(self, usage: dict[str, Any] | None, completed: bool) -> None:
        return None


Gate = Callable[[Request, InnerRequest], Awaitable[tuple[InnerRequest, Observer]]]


@dataclass(frozen=True)
class Mount:
    """A dialect served at a path, with the gate its requests pass (if any)."""

    dialect: ServerDialect
    gate: Gate | None = None


@dataclass(frozen=True)
class Services:
    """What the endpoint asks of the gateway."""

    slot: EngineSlot
    admission: Admission
    metrics: GatewayMetrics
    max_body_bytes: int
    body_timeout: float
    opens: asyncio.Semaphore
    padding: PaddingPolicy = PaddingPolicy()
    replay: ReplayGuard | None = None
    stream_interval: float = 0.0  # seconds; 0 relays each engine chunk as it comes
    constant_rate: bool = False
    # vLLM's prefix cache is shared within a tenant only: `cache_salt` is derived from
    # this key and the request's tenant (a new random one per gateway process).
    cache_salt_key: bytes = dataclasses.field(default_factory=lambda: os.urandom(32))
    max_tokens: int | None = None  # `--max-tokens`: the output a request may ask for
    # A stream write that does not go through in this many seconds (the reader stopped
    # reading) ends the stream: the engine request is aborted, the admission slot freed.
    write_timeout: float = 20.0
    forwarding: UntrustedForwarding = dataclasses.field(
        default_factory=lambda: UntrustedForwarding(trusted=False))
    receipts: ReceiptIssuer | None = None  # signs a receipt for every answer that carries one


def admit(services: Services, scope: Scope) -> contextlib.AbstractContextManager[None]:
    """The request's admission slot for its client (held while entered); `GatewayError`
    (429 `rate_limited`, 503 `overloaded`) when there is none now. Every engine-bound
    request passes here, whatever route it came by."""
    client = client_key(scope)
    services.forwarding.notice(scope)
    refusal = services.admission.refusal(client, services.slot.unfinished_requests())
    if refusal is not None:
        raise refusal
    return services.admission.admitted(client)


def to_response(outer: OuterResponse) -> Response:
    """A dialect's answer as a Starlette response."""
    return Response(outer.body, status_code=outer.status, headers=dict(outer.headers))


class _Tracker:
    """Follows one answer: chunks sent, time to the first, usage, whether it ended."""

    def __init__(self, services: Services, dialect: str, started_at: float,
                 observer: Observer) -> None:
        self._ttft = services.metrics.ttft.labels(dialect)
        self._started_at = started_at
        self.observer = observer
        self.usage: dict[str, Any] | None = None
        self.completed = False
        self._first = True

    def saw_whole(self, body: bytes) -> None:
        if self.observer.wants_usage:
            self.usage = sse.usage_of(body) or self.usage

    def saw_chunk(self, chunk: bytes) -> None:
        if self._first:
            self._first = False
            self._ttft.observe(time.perf_counter() - self._started_at)
        if self.observer.wants_usage and b'"usage"' in chunk:
            for payload in sse.data_of(chunk):
                self.usage = sse.usage_of(payload) or self.usage


# How long an answer and its admission slot wait for the request's cost to be settled.
# Past it (the database is away: `Meter` retries for a minute) the settlement goes on
# in the background and the answer goes out: an outage must not hold every slot.
SETTLE_WAIT_SECONDS = 2.0
_settling: set[asyncio.Task[None]] = set()


async def _settle(tracker: _Tracker) -> None:
    """Tell the observer how the request ended, waiting at most `SETTLE_WAIT_SECONDS`;
    the telling is never cancelled with the request (it was shielded before)."""
    if isinstance(tracker.observer, NoObserver):
        return
    task = asyncio.ensure_future(tracker.observer.finish(tracker.usage, tracker.completed))
    _settling.add(task)  # the loop keeps only a weak reference to a task
    task.add_done_callback(_settled)
    await asyncio.wait({task}, timeout=SETTLE_WAIT_SECONDS)


def _settled(task: asyncio.Task[None]) -> None:
    _settling.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("settle_failed", error_type=type(task.exception()).__name__)


class _Relay:
    """Relays a streamed engine answer through the responder, coalesced on a timer."""

    def __init__(self, call: EngineCall, answer: EngineResponse, responder: Responder,
                 start: StreamStart, tracker: _Tracker, services: Services) -> None:
        self._call, self._answer, self._responder = call, answer, responder
        self._start, self._tracker = start, tracker
        self._interval, self._constant = services.stream_interval, services.constant_rate
        self._write_timeout = services.write_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start, responder, tracker = self._start, self._responder, self._tracker

        async def bounded(message: dict[str, Any]) -> None:
            async with asyncio.timeout(self._write_timeout):  # a timer, not a task
                await send(message)

        try:
            await bounded({"type": "http.response.start", "status": start.status,
                           "headers": [(k.encode(), v.encode()) for k, v in start.headers]})
            if start.body:
                await bounded({"type": "http.response.body", "body": start.body,
                               "more_body": True})
            pieces = coalesced(self._answer.chunks(), self._interval,
                               constant_rate=self._constant)
            try:
                async for chunk in pieces:
                    if self._call.gone.is_set():
                        return
                    if chunk:
                        tracker.saw_chunk(chunk)
                    await bounded({"type": "http.response.body",
                                   "body": responder.chunk(chunk), "more_body": True})
            except (OSError, TimeoutError):
                raise
            except Exception as exc:  # noqa: BLE001 - the engine failed mid-stream
                log.error("engine_stream_failed", error_type=type(exc).__name__)
                failed = sse.event(error_json(ErrorCode.ENGINE_FAILED,
                                              "the inference engine failed")) + sse.event(sse.DONE)
                await bounded({"type": "http.response.body", "body": responder.chunk(failed),
                               "more_body": True})
            if not self._call.gone.is_set():
                await bounded({"type": "http.response.body", "body": responder.end()})
                tracker.completed = True
        except TimeoutError:
            # The reader stopped reading: give up on it. Returning unfinished makes the
            # server close the connection; the endpoint aborts the engine request.
            log.warning("stream_write_timeout", seconds=self._write_timeout)
        except OSError:
            pass  # the client went away while we were writing (ASGI spec 2.4)


class EngineEndpoint:
    """An ASGI endpoint for one path, served by one or more dialects (tried in order)."""

    def __init__(self, mounts: Sequence[Mount], services: Services) -> None:
        if not mounts:
            raise ValueError("an endpoint needs at least one dialect")
        self._mounts = tuple(mounts)
        self._services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        context = RequestContext.of(scope)
        services = self._services
        tracker: _Tracker | None = None
        call: EngineCall | None = None
        settled = False
        try:
            slot = admit(services, scope)
        except GatewayError as refusal:
            services.metrics.rejected.labels(refusal.code.value).inc()
            await refusal.response()(scope, receive, send)
            return
        with slot:
            try:
                answer, tracker, call = await self._serve(request, context)
                if tracker is not None and not isinstance(answer, _Relay):
                    # A whole answer is settled before it is sent: whoever has the answer
                    # sees its usage (a stream settles when it has ended).
                    settled = True
                    await _settle(tracker)
                await answer(scope, receive, send)
            finally:
                if call is not None:
                    await call.close()
                if tracker is not None:
                    services.metrics.in_flight.labels(context.dialect).dec()
                    if not settled:
                        await _settle(tracker)

    async def _serve(self, request: Request, context: RequestContext
                     ) -> tuple[Any, _Tracker | None, EngineCall | None]:
        services = self._services
        try:
            body = await read_body(request, services.max_body_bytes,
                                   timeout=services.body_timeout)
        except GatewayError as err:
            return self._refused(self._mounts[0].dialect, err), None, None
        outer = OuterRequest(request.method, request.url.path,
                             tuple((k, v) for k, v in request.headers.items()), body)
        opened = await self._open(outer)
        if isinstance(opened, _NotOpened):
            context.dialect = opened.dialect.name
            services.metrics.crypto_failures.labels(context.dialect, "open_request").inc()
            return self._refused(opened.dialect, opened.error), None, None
        mount, inner, responder, problem = (opened.mount, opened.inner, opened.responder,
                                            opened.problem)
        context.dialect = mount.dialect.name
        services.metrics.in_flight.labels(context.dialect).inc()
        tracker = _Tracker(services, context.dialect, context.started_at, NoObserver())
        receipt = None
        if services.receipts is not None and isinstance(responder, CarriesReceipts):
            receipt = services.receipts.pending(body)
            receipt.model = _model_named(inner)
            responder.sign_with(receipt)
        responder = padded(responder, services.padding)
        if opened.refused_inside:  # before a gate meters it or anything records it
            assert problem is not None
            services.metrics.rejected.labels(problem.code.value).inc()
            return (to_response(responder.error(problem.status, problem.body_json())),
                    tracker, None)
        try:
            if problem is None:
                inner = _normalized(inner, services.max_tokens)
            if mount.gate is not None:
                gated, tracker.observer = await mount.gate(request, inner)
                if gated is not inner:  # the gate may rewrite the request: check it again
                    inner, problem = gated, _inner_problem(gated)
            if problem is not None:  # refused before anything is recorded of it
                return (to_response(responder.error(problem.status, problem.body_json())),
                        tracker, None)
        except GatewayError as err:
            return to_response(responder.error(err.status, err.body_json())), tracker, None
        try:  # only a request that passed every check is recorded against its replay
            client = client_key(request.scope)
            if services.replay is not None and services.replay.blocking:
                await asyncio.to_thread(services.replay.check, mount.dialect.name, inner,
                                        client)
            elif services.replay is not None:
                services.replay.check(mount.dialect.name, inner, client)
        except RequestRefused as err:
            services.metrics.rejected.labels(err.code.value).inc()
            return (to_response(responder.error(err.status, error_json(err.code, err.message))),
                    tracker, None)
        try:
            inner = _with_cache_salt(inner, services.cache_salt_key)
            engine = services.slot.get()
            inner = _latest_resolved(inner, engine.model_names())
            if receipt is not None:
                receipt.model = _model_named(inner)
        except GatewayError as err:
            return to_response(responder.error(err.status, err.body_json())), tracker, None
        call = EngineCall(engine, request.receive)
        try:
            answer = await call.start(EngineRequest(
                inner.method, inner.path, inner.body, request_id=context.request_id,
                payload=inner.payload if inner.method == "POST" else None))
            return await self._answer(call, answer, responder, tracker), tracker, call
        except ClientGone as gone:  # answered to no one; counted under its status
            return to_response(responder.error(gone.status, gone.body_json())), tracker, call
        except Exception as exc:  # noqa: BLE001 - answered sealed; the type only is logged
            log.error("engine_call_failed", error_type=type(exc).__name__)
            failed = responder.error(500, error_json(ErrorCode.INTERNAL_ERROR, "internal error"))
            return to_response(failed), tracker, call

    async def _answer(self, call: EngineCall, answer: EngineResponse, responder: Responder,
                      tracker: _Tracker) -> Any:
        if answer.status >= 400 and not answer.is_event_stream:
            body = normalize_engine_error(answer.status, await answer.read())
            tracker.completed = True
            return to_response(responder.error(answer.status, body))
        content_type = answer.content_type or "application/json"
        if answer.is_event_stream and responder.streams:
            start = responder.start(answer.status, content_type)
            return _Relay(call, answer, responder, start, tracker, self._services)
        content = await answer.read()  # a stream is gathered when the dialect needs one message
        tracker.saw_whole(content)
        tracker.completed = True
        return to_response(responder.whole(answer.status, content_type, content))

    async def _open(self, outer: OuterRequest) -> _Opened | _NotOpened:
        if len(outer.body) <= INLINE_OPEN_BYTES:
            return _open_with(self._mounts, outer)
        async with self._services.opens:
            return await asyncio.to_thread(_open_with, self._mounts, outer)

    def _refused(self, dialect: ServerDialect, error: RequestRefused) -> Response:
        self._services.metrics.rejected.labels(error.code.value).inc()
        response = to_response(dialect.refuse(error))
        for name, value in error.headers.items():
            response.headers[name] = value
        return response


@dataclass(frozen=True)
class _Opened:
    mount: Mount
    inner: InnerRequest
    responder: Responder
    problem: GatewayError | None  # what the engine must not see: answered sealed
    refused_inside: bool = False  # by the dialect, once opened (`SealedRefusal`)


@dataclass(frozen=True)
class _NotOpened:
    dialect: ServerDialect
    error: RequestRefused  # answered unsealed, in the dialect's shape


def _open_with(mounts: Sequence[Mount], outer: OuterRequest) -> _Opened | _NotOpened:
    """The first dialect that accepts the request opens it, and the opened request is
    checked (pure CPU: may run in a worker thread)."""
    mount = next((m for m in mounts if m.dialect.accepts(outer)), mounts[-1])
    try:
        inner, responder = mount.dialect.open(outer)
    except SealedRefusal as error:  # opened, refused inside: the answer goes sealed
        return _Opened(mount, InnerRequest(outer.method, outer.path),
                       cast(Responder, error.responder),
                       GatewayError(error.code, error.message, param=error.param),
                       refused_inside=True)
    except RequestRefused as error:
        return _NotOpened(mount.dialect, error)
    return _Opened(mount, inner, responder, _inner_problem(inner))


def _inner_problem(inner: InnerRequest) -> GatewayError | None:
    """Why an opened request must not reach the engine, if it must not."""
    if (inner.method, inner.path) not in ENGINE_ROUTES:
        return GatewayError(ErrorCode.NOT_FOUND, "no such route")
    if inner.method == "POST":
        try:
            payload = payload_object(inner)  # parsed here, once, for the whole path
        except GatewayError as refused:
            return refused
        if "cache_salt" in payload:
            return GatewayError(ErrorCode.CACHE_SALT_REFUSED, "cache_salt is set by the "
                                "gateway (per tenant); leave it out", param="cache_salt")
    return None


SALTED_PATHS = frozenset({CHAT[1], COMPLETIONS[1]})
LATEST = "latest"


def _model_named(inner: InnerRequest) -> str:
    """The model a request names (for its receipt), or "" where it names none."""
    try:
        payload = inner.payload if inner.method == "POST" and inner.body else None
    except ValueError:  # not JSON: refused on its way, with its receipt
        return ""
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) else ""


def _latest_resolved(inner: InnerRequest, names: Sequence[str]) -> InnerRequest:
    """Model `latest`, sealed as it is by a client that did not resolve it: the engine's
    generation model (listed first) for chat and completions, its embedding model
    (listed last) for embeddings."""
    if inner.method != "POST" or not names:
        return inner
    payload = inner.payload
    if not isinstance(payload, dict) or payload.get("model") != LATEST:
        return inner
    model = names[-1] if inner.path == "/v1/embeddings" else names[0]
    return inner.with_payload({**payload, "model": model})


def _normalized(inner: InnerRequest, cap: int | None) -> InnerRequest:
    """Chat and completion requests with their cost fields in canonical form, under the
    cap (`gateway.sampling`); raises `GatewayError`."""
    if inner.method != "POST" or inner.path not in SALTED_PATHS:
        return inner
    payload = dict(inner.payload)
    sampling.normalize(payload, cap=cap)
    return inner.with_payload(payload)


def _with_cache_salt(inner: InnerRequest, key: bytes) -> InnerRequest:
    """The request with vLLM's `cache_salt`: the same for one tenant's requests, so
    they reuse each other's prefix cache, and unrelated to any other tenant's (a request
    without a stable tenant gets a salt of its own), so that time to first token says
    nothing about other tenants' prompts (CVE-2025-46570)."""
    if inner.method != "POST" or inner.path not in SALTED_PATHS:
        return inner
    payload = dict(inner.payload)
    payload["cache_salt"] = tenant_salt(key, inner.tenant or os.urandom(16))
    return inner.with_payload(payload)


def tenant_salt(key: bytes, tenant: bytes) -> str:
    return hmac.new(key, b"cloister-cache-salt-v1\x00" + tenant, hashlib.sha256).hexdigest()
