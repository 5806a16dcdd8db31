"""The transparency log's routes on the public listener (`gateway.tlog`), and the
one-request verification bundle.

    GET /v1/log/checkpoint                       the latest signed checkpoint (a note)
    GET /v1/log/tile/<C2SP tile path>            a tile of that checkpoint's tree
    GET /v1/log/proof/inclusion?leaf=HEX&size=N  {"index", "size", "proof": [base64]}
    GET /v1/log/proof/consistency?from=M&to=N    {"from", "to", "proof": [base64]}
    GET /v1/attestation/bundle?nonce=HEX[&from=M] {"report": evidence document over nonce (text)
                                                  (collateral inside), "statements": [DSSE],
                                                  "checkpoint": note text, "inclusion":
                                                  [{"index", "proof"}] per statement,
                                                  "consistency": [base64] from size M (the
                                                  client's last checkpoint; default 0)}
        ?challenge=HEX instead of nonce: the report is the per-epoch one with the attested
        challenge key's answer (as `/v1/attestation/report?challenge=`)

Proofs are for sizes up to the latest checkpoint only, so every answer can be checked
against a checkpoint the client can get.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from enclave.tlog.entries import release_leaf
from enclave.tlog.merkle import ProofError
from enclave.tlog.tiles import TileError
from enclave.wire_errors import ErrorCode
from gateway import attestation_routes
from gateway.errors import GatewayError, json_response
from gateway.tlog import TransparencyLog

CHECKPOINT_PATH = "/v1/log/checkpoint"
BUNDLE_PATH = "/v1/attestation/bundle"
NOTE_MEDIA_TYPE = "text/plain; charset=utf-8"


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def _int(request: Request, name: str, default: int | None = None) -> int:
    text = request.query_params.get(name)
    if text is None and default is not None:
        return default
    if text is None or not text.isdigit() or len(text) > 18:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"{name} must be a tree size",
                           param=name)
    return int(text)


def _signed_size(log: TransparencyLog) -> int:
    if log.checkpoint is None:
        raise GatewayError(ErrorCode.LOG_NOT_READY, "the log has no checkpoint yet",
                           headers={"Retry-After": "1"})
    return log.checkpoint_size()


def _within(log: TransparencyLog, size: int, name: str) -> int:
    if size > _signed_size(log):
        raise GatewayError(ErrorCode.NOT_FOUND, "the log has no checkpoint of that size "
                           "yet", param=name)
    return size


def log_routes(log: TransparencyLog) -> list[BaseRoute]:
    async def checkpoint(request: Request) -> Response:
        _signed_size(log)
        assert log.checkpoint is not None
        return Response(log.checkpoint, media_type=NOTE_MEDIA_TYPE,
                        headers={"cache-control": "no-store"})

    async def tile(request: Request) -> Response:
        try:
            data = await asyncio.to_thread(log.tile, "tile/" + request.path_params["path"],
                                           _signed_size(log))
        except TileError:
            raise GatewayError(ErrorCode.NOT_FOUND, "no such tile in the latest "
                               "checkpoint's tree") from None
        full = ".p/" not in request.url.path  # a full tile never changes
        return Response(data, media_type="application/octet-stream", headers={
            "cache-control": "public, max-age=31536000, immutable" if full else "no-store"})

    async def inclusion(request: Request) -> Response:
        try:
            leaf = bytes.fromhex(request.query_params.get("leaf", ""))
        except ValueError:
            leaf = b""
        if len(leaf) != 32:
            raise GatewayError(ErrorCode.INVALID_REQUEST, "leaf must be 64 hex digits "
                               "(the entry's RFC 9162 leaf hash)", param="leaf")
        size = _within(log, _int(request, "size", _signed_size(log)), "size")
        try:
            index, proof = await asyncio.to_thread(log.inclusion, leaf, size)
        except ProofError:
            raise GatewayError(ErrorCode.NOT_FOUND, "no such entry in the tree of that "
                               "size", param="leaf") from None
        return json_response(200, {"index": index, "size": size, "proof": _b64(proof)})

    async def consistency(request: Request) -> Response:
        first = _int(request, "from")
        second = _within(log, _int(request, "to", _signed_size(log)), "to")
        try:
            proof = log.consistency(first, second)
        except ProofError as exc:
            raise GatewayError(ErrorCode.INVALID_REQUEST, str(exc), param="from") from None
        return json_response(200, {"from": first, "to": second, "proof": _b64(proof)})

    return [Route(CHECKPOINT_PATH, checkpoint, methods=["GET"]),
            Route("/v1/log/tile/{path:path}", tile, methods=["GET"]),
            Route("/v1/log/proof/inclusion", inclusion, methods=["GET"]),
            Route("/v1/log/proof/consistency", consistency, methods=["GET"])]


def bundle_endpoint(service: attestation_routes.ReportService | None,
                    attested: attestation_routes.Attested | None, log: TransparencyLog
                    ) -> Callable[[Request], Awaitable[Response]]:
    """Everything a cold client needs, in one answer: a fresh report over its nonce (its
    vendors' collateral inside), the release statements, and the latest checkpoint with
    each statement's inclusion proof."""
    statements = attested.statements if attested is not None else ()

    async def bundle(request: Request) -> Response:
        if service is None:
            raise GatewayError(ErrorCode.ATTESTATION_UNAVAILABLE,
                               "this gateway was started without attestation")
        challenged = "challenge" in request.query_params
        nonce = attestation_routes._nonce(request, "challenge" if challenged else "nonce")
        size = _signed_size(log)
        assert log.checkpoint is not None
        note = log.checkpoint
        since = _int(request, "from", 0)
        # past this log's size: no proof exists, and the client, which saw a larger tree,
        # refuses the rollback itself
        consistency = log.consistency(since, size) if since <= size else []
        inclusion = []
        for statement in statements:
            try:
                index, proof = await asyncio.to_thread(
                    log.inclusion, release_leaf(json.loads(statement)), size)
            except ProofError:  # not logged yet: the client refuses it, or waits
                raise GatewayError(ErrorCode.LOG_NOT_READY, "the release statements are "
                                   "not in a checkpoint yet",
                                   headers={"Retry-After": "1"}) from None
            inclusion.append({"index": index, "proof": _b64(proof)})
        client = request.client.host if request.client else "unknown"
        report = (await service.answer(nonce) if challenged
                  else await service.fresh(nonce, client))
        body = {"report": report.decode(),
                "statements": [json.loads(s) for s in statements],
                "checkpoint": note.decode(), "inclusion": inclusion,
                "consistency": _b64(consistency)}
        return json_response(200, body, headers={"cache-control": "no-store"})

    return bundle
