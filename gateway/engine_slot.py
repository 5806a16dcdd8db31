"""The engine's place in the gateway: started in the background, ready when it answers.

The HTTP listener comes up at once so that `/health` answers while a model loads (tens of
seconds on a CPU, minutes for a large model on a GPU); `/ready` turns 200 only once the
engine answers a health check. If the engine cannot start, or dies once started (its
health check, polled every `WATCH_SECONDS`, raises `EngineDead`), the slot records that,
calls `on_failure` (the CLI stops the server and exits non-zero, so systemd or Kubernetes
restarts it) and `/health` and `/ready` say so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import structlog

from enclave.engine import Engine, EngineDead
from enclave.wire_errors import ErrorCode
from gateway.errors import GatewayError

EngineFactory = Callable[[], AbstractAsyncContextManager[Engine]]

log = structlog.get_logger("cloister.engine")

# A client that arrives while the engine loads is told to come back after this many seconds.
RETRY_AFTER_SECONDS = 5
# How often a running engine's health is checked (a dead one is noticed within this).
WATCH_SECONDS = 0.5


class EngineSlot:
    def __init__(self, factory: EngineFactory, *, on_failure: Callable[[], None] | None = None):
        self._factory = factory
        self._on_failure = on_failure
        self._engine: Engine | None = None
        self._failed = False
        self._withheld: str | None = None
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def failed(self) -> bool:
        return self._failed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cloister-engine")

    async def wait_started(self) -> Engine | None:
        await self._started.wait()
        return self._engine

    async def _run(self) -> None:
        try:
            async with self._factory() as engine:
                self._engine = engine
                self._started.set()
                log.info("engine_started", models=engine.model_names())
                await self._watch(engine)
        except Exception as exc:  # noqa: BLE001 - reported, then the server stops
            self._failed = True
            # The exception type is safe to log; its text may quote configuration.
            log.error("engine_failed", error_type=type(exc).__name__)
            if self._on_failure is not None:
                self._on_failure()
        finally:
            self._engine = None
            self._started.set()

    async def _watch(self, engine: Engine) -> None:
        """Until stopped: raise `EngineDead` as soon as a health check says so."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_SECONDS):  # a timer, not a task
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                await engine.check_health()
            except EngineDead:
                self._engine = None  # no new request reaches it
                raise
            except Exception:  # noqa: BLE001 - not ready is not dead: /ready reports it
                continue

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def current(self) -> Engine | None:
        """The running engine, if there is one."""
        return self._engine

    def unfinished_requests(self) -> int:
        """Requests the engine has accepted and not finished (0 while there is none)."""
        return self._engine.unfinished_requests() if self._engine is not None else 0

    def withhold(self, reason: str | None) -> None:
        """Keep the engine from every request while `reason` holds (its known-answer
        check failed: `gateway.known_answer`); None gives it back."""
        self._withheld = reason

    def get(self) -> Engine:
        """The running engine, or a 503 error that says why there is none."""
        if self._engine is not None and self._withheld is not None:
            raise GatewayError(ErrorCode.KNOWN_ANSWER_FAILED, "the engine failed its "
                               f"known-answer check ({self._withheld})")
        if self._engine is not None:
            return self._engine
        if self._failed:
            raise GatewayError(ErrorCode.ENGINE_FAILED, "the inference engine failed")
        raise GatewayError(
            ErrorCode.ENGINE_NOT_READY,
            "the inference engine is starting; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
