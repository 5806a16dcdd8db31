"""vLLM's OpenAI serving layer called directly, as vLLM's `run_batch` and Ray Serve do.

`init_app_state` fills a state with vLLM's serving objects; each allow-listed route is
answered by calling them (`create_chat_completion`, `create_completion`, the embedding
handler) with a validated request model, without vLLM's FastAPI app around them. The
templating, sampling, usage, SSE framing and error shapes stay vLLM's; what is skipped is
one ASGI application per request (routing, dependency validation, exception
middleware, a streaming response with its own disconnect task), which the profile of
issue 8 showed dominating the gateway's per-event cost.

Validation errors keep vLLM's shape and name the failing field, but never quote its
value (pydantic's `input`), since error bodies may leave the enclave unencrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from enclave.engine import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    PAYLOAD_SCOPE_KEY,
    Receive,
    Scope,
    Send,
)


def _error(status: int, message: str, *, kind: str = "BadRequestError",
           param: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": kind, "param": param,
                              "code": status}}


def _validation_error(exc: Any) -> tuple[int, dict[str, Any]]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = ".".join(str(p) for p in ("body", *first.get("loc", ())))
    message = f"{len(errors)} validation error(s): {loc}: {first.get('msg', 'invalid')}"
    return _error(400, message, param=loc)


async def _send_json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def relay_stream(generator: AsyncGenerator[str, None], receive: Receive, send: Send) -> None:
    """Relay vLLM's SSE strings; a client that goes away aborts the engine request."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})

    async def relay() -> None:
        async for event in generator:
            await send({"type": "http.response.body", "body": event.encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    relaying = asyncio.ensure_future(relay())
    watching = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({relaying, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (relaying, watching):
            task.cancel()
        with contextlib.suppress(BaseException):
            await relaying
        with contextlib.suppress(BaseException):
            await watching
        await generator.aclose()  # vLLM aborts an unfinished request here
    if relaying.done() and not relaying.cancelled() and relaying.exception() is not None:
        raise relaying.exception()  # type: ignore[misc]


async def serve_openai(state: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one allow-listed POST route from vLLM's serving objects in `state`."""
    from pydantic import TypeAdapter, ValidationError
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.exceptions import VLLMClientError

    route = (scope["method"], scope["path"])
    message = await receive()
    try:
        payload = scope.get(PAYLOAD_SCOPE_KEY)  # the gateway's one parse, where it made it
        if payload is None:
            payload = json.loads(message.get("body", b""))
        if route == CHAT:
            handler = state.openai_serving_chat
            request: Any = ChatCompletionRequest.model_validate(payload)
        elif route == COMPLETIONS:
            handler = state.openai_serving_completion
            request = CompletionRequest.model_validate(payload)
        elif route == EMBEDDINGS:
            handler = getattr(state, "serving_embedding", None)
            request = TypeAdapter(EmbeddingRequest).validate_python(payload)
        else:
            raise LookupError(f"not an engine route: {route}")
    except ValidationError as exc:
        return await _send_json(send, *_validation_error(exc))
    except VLLMClientError as exc:  # raised inside vLLM's own validators: a 4xx
        refused = create_error_response(exc)
        return await _send_json(send, refused.error.code, refused.model_dump())
    except ValueError:
        return await _send_json(send, *_error(400, "the body is not valid JSON"))
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        # A validator of vLLM's that breaks on a body it did not expect: the body does
        # not fit the engine's schema (the client's mistake), not the gateway's error.
        return await _send_json(send, *_error(
            400, f"the body does not fit the engine's request schema "
                 f"({type(exc).__name__} in its validation)", param="body"))
    if handler is None:
        return await _send_json(send, *_error(404, "this model does not serve this route",
                                              kind="NotFoundError"))
    try:
        if route == CHAT:
            result = await handler.create_chat_completion(request, None)
        elif route == COMPLETIONS:
            result = await handler.create_completion(request, None)
        else:
            result = await handler(request, None)  # a Starlette response
    except Exception as exc:  # noqa: BLE001 - vLLM maps its own exceptions to errors
        result = create_error_response(exc)
    if isinstance(result, ErrorResponse):
        await _send_json(send, result.error.code, result.model_dump())
    elif hasattr(result, "model_dump"):
        await _send_json(send, 200, result.model_dump())
    elif hasattr(result, "__aiter__"):
        await relay_stream(result, receive, send)
    else:
        await result(scope, receive, send)
