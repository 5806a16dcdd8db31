"""Reading request bodies: bounded before buffering, parsed into a JSON object."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request

from enclave.dialect import InnerRequest
from enclave.wire_errors import ErrorCode
from gateway.errors import GatewayError


async def read_body(request: Request, limit: int, *, timeout: float) -> bytes:
    """The whole body, refusing (413) as soon as it would exceed `limit` bytes, and (408)
    if it has not all arrived within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, limit)
    except TimeoutError:
        raise GatewayError(ErrorCode.REQUEST_TIMEOUT,
                           f"the request body did not arrive within {timeout:g} s") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise GatewayError(ErrorCode.INVALID_REQUEST, "invalid Content-Length header")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "client disconnected") from None
    return b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(ErrorCode.BODY_TOO_LARGE, f"request body exceeds {limit} bytes")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object body; the error never quotes the body."""
    return _json_object(lambda: json.loads(body))


def payload_object(inner: InnerRequest) -> dict[str, Any]:
    """An opened request's JSON object, as parsed once for the whole path
    (`InnerRequest.payload`); the error never quotes the body. Copy it to change it."""
    return _json_object(lambda: inner.payload)


def _json_object(load: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = load()
    except (ValueError, UnicodeDecodeError):
        raise GatewayError(ErrorCode.INVALID_JSON, "request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise GatewayError(ErrorCode.INVALID_JSON, "request body must be a JSON object")
    return value
