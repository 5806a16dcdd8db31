"""The Atoma dialect over the dialect interface (`enclave.dialect`), both sides.

    GET  /v1/confidential/node                 the node's X25519 and Ed25519 public keys
    POST /v1/nodes/lock {model}                the SDK's way to the node key: `{node_small_id,
                                               public_key, stack_small_id}` (atoma-sdk)
    POST /v1/confidential/chat/completions     (and /completions, /embeddings)

Each answer is one sealed, signed envelope (`enclave.atoma.envelope`); a stream is SSE
events whose data is an envelope (the SDK reads each event as its
`ConfidentialComputeStreamResponse`, `{"data": envelope}`), then `data: [DONE]`.
Upstream Atoma leaves the order and the end of a stream unauthenticated. Inside each
chunk's plaintext we add `cloister_seq` (0, 1, ...) and, before `[DONE]`, a last chunk
with `"choices": []` and `cloister_end: true`: Atoma clients ignore unknown fields;
ours refuses a swapped, duplicated or dropped chunk, an injected `[DONE]` and a stream
that ends without that last chunk.

Receipts (`enclave.receipts`) ride inside the envelope: the sealed plaintext of a whole
answer, and that of a stream's end chunk, gets `cloister_receipt` as its last member
(`with_receipt`; Atoma clients ignore it like our other fields). The response digest
covers every sealed plaintext as the client opens it (padding included), in order, the
end chunk's without its receipt. The seed's clear 500 (and a replay's clear 409) carries
none: it is not sealed, and our client refuses it anyway.

Errors are named like the seed's: `InvalidBody` (400) for a malformed, stale or
unopenable envelope or a missing or non-boolean `stream`, with a stable `code`
(`unknown_key` when the node key is stale); `InternalError` (500) when inference fails.
An engine's 4xx answer travels sealed, like any answer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from enclave import discovery, sse
from enclave.atoma.envelope import (
    ClientSession,
    ConfidentialRequest,
    EnvelopeSealer,
    NodeSigner,
    b64,
    decode_b64_field,
    open_request,
)
from enclave.dialect import (
    SENT_AT_FIELD,
    ControlRoute,
    EngineRoute,
    InnerRequest,
    InnerResponse,
    OuterRequest,
    OuterResponse,
    json_response,
    refusal,
    take_sent_at,
    with_fields,
)
from enclave.errors import InvalidJson, RequestRefused, UnauthenticatedAnswer
from enclave.event_stream import SealedEventsOpener, SealedEventsResponder
from enclave.keys import KeyRing
from enclave.plugin import ClientSetup, DialectSetup
from enclave.receipts import Receipt, Receipts, digest, split_receipt, with_receipt
from enclave.wire_errors import ErrorCode

NAME = "atoma"
# A random value our client seals into every body, so that the clear body hash confirms
# no guessed prompt; the gateway strips it before the engine.
BLIND_FIELD = "cloister_blind"
PREFIX = "/v1/confidential"
NODE_PATH = f"{PREFIX}/node"
LOCK_PATH = "/v1/nodes/lock"
MAX_LOCK_BODY = 4096  # `{"model": ...}`
# One node, one stack: the ids the SDK carries back in every envelope.
NODE_SMALL_ID = 1
STACK_SMALL_ID = 1
ENGINE_PATHS = {f"{PREFIX}/chat/completions": "/v1/chat/completions",
                f"{PREFIX}/completions": "/v1/completions",
                f"{PREFIX}/embeddings": "/v1/embeddings"}
SEQ_FIELD = "cloister_seq"
END_FIELD = "cloister_end"
# A sealed answer's own status, inside the seal: the outer one is 200 for every sealed
# answer, so the wire does not say which requests failed.
STATUS_FIELD = "cloister_status"


ERROR_KINDS = {401: "AuthError", 404: "NotFound", 429: "TooManyRequests"}


def error_object(status: int, code: str, message: str) -> bytes:
    kind = "InternalError" if status >= 500 else ERROR_KINDS.get(status, "InvalidBody")
    return json.dumps({"error": {"type": kind, "code": code, "message": message}}).encode()


# --- server side ---------------------------------------------------------------------------

class AtomaResponder(SealedEventsResponder):
    def __init__(self, sealer: EnvelopeSealer) -> None:
        super().__init__()
        self._sealer = sealer
        self._seq = 0

    def _envelope(self, status: int, plaintext: bytes) -> OuterResponse:
        if status != 200:
            try:
                plaintext = with_fields(plaintext, {STATUS_FIELD: status})
            except ValueError:
                plaintext = error_object(status, "upstream_error", "the engine refused")
                plaintext = with_fields(plaintext, {STATUS_FIELD: status})
        padded = self.padding.pad_json(plaintext)
        if self._receipt is not None:
            padded = with_receipt(padded, self._receipt(digest(padded)))
        sealed = self._sealer.seal(padded, usage=sse.usage_of(plaintext))
        return self._outer(200, json.dumps(sealed).encode())

    def whole(self, status: int, content_type: str, body: bytes) -> OuterResponse:
        return self._envelope(status, body) if status < 500 else self.error(status, body)

    def error(self, status: int, error: bytes) -> OuterResponse:
        if status >= 500:  # the seed's InternalError, in the clear: it says nothing
            return json_response(500, error_object(500, "internal_error", "inference failed"))
        if status == 409:  # a replay: its sender cannot open a sealed answer, and the wire
            # already shows the repeat
            return json_response(409, error_object(409, ErrorCode.REPLAYED_REQUEST.value,
                                                   "this request was already served"))
        return self._envelope(status, error)

    def _seal_event(self, payload: bytes, *, final: bool) -> bytes:
        fields: dict[str, Any] = {SEQ_FIELD: self._seq, **({END_FIELD: True} if final else {})}
        plaintext = with_fields(payload, fields)
        self._seq += 1
        padded = self.padding.pad_json(plaintext)
        if self._receipt is not None:
            self._content.update(padded)
            if final:
                padded = with_receipt(padded, self._receipt(self._content.hexdigest()))
        sealed = self._sealer.seal(padded, usage=sse.usage_of(plaintext))
        return sse.event(json.dumps(sealed).encode())


def server(setup: DialectSetup) -> AtomaServer:
    """Its signing key from the fleet's seed in a fleet, else made here."""
    from nacl.signing import SigningKey

    if setup.derive is None:
        return AtomaServer(setup.keyring, NodeSigner())
    return AtomaServer(setup.keyring,
                       NodeSigner(SigningKey(setup.derive("atoma-signing-ed25519", 32))))


class AtomaServer:
    name = NAME
    end_authenticated = True

    def __init__(self, keyring: KeyRing, signer: NodeSigner) -> None:
        self._keyring, self._signer = keyring, signer

    def accepts(self, request: OuterRequest) -> bool:
        return True

    def published_keys(self) -> dict[str, bytes]:
        return {"atoma-node-x25519": self._keyring.current().public_key,
                "atoma-signing-ed25519": self._signer.public_key}

    def engine_routes(self) -> tuple[EngineRoute, ...]:
        return tuple(EngineRoute("POST", path, credential=True) for path in ENGINE_PATHS)

    def control_routes(self) -> tuple[ControlRoute, ...]:
        return (ControlRoute("GET", NODE_PATH, lambda call: self.node_info()),
                ControlRoute("POST", LOCK_PATH, lambda call: self.node_lock(
                    call.request.body, call.models()), max_body=MAX_LOCK_BODY,
                    credential=True))

    def node_info(self) -> OuterResponse:
        """`GET /v1/confidential/node`."""
        return json_response(200, json.dumps({
            "node_dh_public_key": b64(self._keyring.current().public_key),
            "signing_public_key": b64(self._signer.public_key),
            "signature_scheme": "ed25519",
            "expires_at": int(self._keyring.expires_at())}).encode())

    def node_lock(self, body: bytes, models: list[str]) -> OuterResponse:
        """`POST /v1/nodes/lock {model}`: the current node key for a model served here."""
        try:
            model = json.loads(body).get("model")
        except (ValueError, UnicodeDecodeError, AttributeError):
            model = None
        if not isinstance(model, str):
            return json_response(400, error_object(400, "invalid_request",
                                                   "`model` must be a string"))
        if model not in models:
            return json_response(404, error_object(404, "model_not_found",
                                                   "no node serves this model"))
        return json_response(200, json.dumps({
            "node_small_id": NODE_SMALL_ID, "stack_small_id": STACK_SMALL_ID,
            "public_key": b64(self._keyring.current().public_key),
            "stack_entry_digest": None}).encode())

    def open(self, request: OuterRequest) -> tuple[InnerRequest, AtomaResponder]:
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidJson("the body is not valid JSON") from None
        envelope = ConfidentialRequest.parse(payload)
        plaintext, sealer = open_request(envelope, self._keyring, self._signer)
        try:
            inner = json.loads(plaintext)
        except (ValueError, UnicodeDecodeError):
            inner = None
        unique = envelope.client_dh_public_key + envelope.salt + envelope.nonce
        opened = InnerRequest("POST", ENGINE_PATHS[request.path], plaintext, replay_id=unique,
                              tenant=envelope.client_dh_public_key)
        if isinstance(inner, dict):  # else the gateway answers a sealed invalid_json
            inner.pop(BLIND_FIELD, None)
            opened = dataclasses.replace(opened, sent_at=take_sent_at(inner))
            inner["stream"] = envelope.stream
            inner.setdefault("model", envelope.model_name)
            opened = opened.with_payload(inner)
        return opened, AtomaResponder(sealer)

    def refuse(self, error: RequestRefused) -> OuterResponse:
        status = error.status
        if status == 422:  # a stale node key is the seed's InvalidBody, with its own code
            status = 400
        return json_response(status, error_object(status, str(error.code), error.message))


# --- client side ---------------------------------------------------------------------------

class AtomaOpener(SealedEventsOpener):
    def __init__(self, session: ClientSession, sent: bytes, receipts: Receipts) -> None:
        super().__init__(sent, receipts)
        self._session = session
        self._seq = 0

    def _open(self, payload: Any) -> bytes:
        try:
            return self._session.open_response(payload)
        except RequestRefused as exc:
            raise UnauthenticatedAnswer("the gateway's answer failed to open") from exc

    def whole(self, response: OuterResponse) -> InnerResponse:
        try:
            payload = json.loads(response.body)
        except (ValueError, UnicodeDecodeError):
            payload = None
        sealed = isinstance(payload, dict) and "ciphertext" in payload
        if not sealed or response.status != 200:
            raise refusal(response)
        plaintext, receipt = split_receipt(self._open(payload))
        self._receipts.check(receipt, self._sent, digest(plaintext))
        return self._with_inner_status(plaintext)

    @staticmethod
    def _with_inner_status(plaintext: bytes) -> InnerResponse:
        """The sealed answer and the status sealed with it (200 where none is)."""
        if STATUS_FIELD.encode() not in plaintext:  # the common case: no parse
            return InnerResponse(200, "application/json", plaintext)
        try:
            answer = json.loads(plaintext)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnauthenticatedAnswer("the sealed answer is malformed") from exc
        if not isinstance(answer, dict) or STATUS_FIELD not in answer:
            return InnerResponse(200, "application/json", plaintext)  # the text says it
        status = answer.pop(STATUS_FIELD)
        if not isinstance(status, int) or not 400 <= status < 500:
            raise UnauthenticatedAnswer("the sealed answer carries a malformed status")
        return InnerResponse(status, "application/json", json.dumps(answer).encode())

    def _open_event(self, payload: bytes) -> tuple[bytes | None, bool]:
        try:
            plaintext, receipt = split_receipt(self._open(json.loads(payload)))
            chunk = json.loads(plaintext)
            seq = chunk.pop(SEQ_FIELD)
            ended = chunk.pop(END_FIELD, False) is True
        except UnauthenticatedAnswer:
            raise
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise UnauthenticatedAnswer("a chunk of the stream is malformed") from exc
        if seq != self._seq:
            raise UnauthenticatedAnswer("the stream's chunks are out of order")
        self._seq += 1
        self._content.update(plaintext)
        if ended:
            self._receipts.check(receipt, self._sent, self._content.hexdigest())
        return (None if ended else sse.event(json.dumps(chunk).encode())), ended


class AtomaClient:
    """The client side, for one verified pair of node keys."""

    name = NAME

    def __init__(self, node_dh_public_key: bytes, signing_public_key: bytes, *,
                 api_key: str | None = None,
                 keep_receipt: Callable[[Receipt, bytes | None], None] | None = None) -> None:
        self.node_keys = (node_dh_public_key, signing_public_key)
        self._api_key = api_key  # Bearer, where the gateway keeps accounts
        self.receipts = Receipts(sink=keep_receipt)

    @classmethod
    def from_node_info(cls, body: bytes, *, api_key: str | None = None,
                       keep_receipt: Callable[[Receipt, bytes | None], None] | None = None
                       ) -> AtomaClient:
        """From `GET /v1/confidential/node`; `UnauthenticatedAnswer` if malformed (the keys
        are checked against the attestation report before use)."""
        try:
            info = json.loads(body)
            return cls(decode_b64_field(info, "node_dh_public_key", 32),
                       decode_b64_field(info, "signing_public_key", 32), api_key=api_key,
                       keep_receipt=keep_receipt)
        except (ValueError, RequestRefused, AttributeError) as exc:
            raise UnauthenticatedAnswer("malformed node keys") from exc

    def seal(self, request: InnerRequest, *, stream: bool) -> tuple[OuterRequest, AtomaOpener]:
        session = ClientSession(*self.node_keys)
        body = request.body
        try:
            payload = json.loads(body)
            model = payload.get("model", "")
            # Atoma sends the body's BLAKE2b in the clear: a random field inside makes it
            # confirm no guessed prompt (the gateway strips it)
            body = json.dumps({**payload, BLIND_FIELD: os.urandom(16).hex(),
                               SENT_AT_FIELD: int(time.time())}).encode()
        except (ValueError, AttributeError, TypeError):
            model = ""
        envelope = session.seal_request(body, model_name=str(model), stream=stream)
        path = PREFIX + request.path.removeprefix("/v1")
        headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
        if self._api_key is not None:
            headers += (("authorization", f"Bearer {self._api_key}"),)
        sealed = json.dumps(envelope).encode()
        return (OuterRequest("POST", path, headers, sealed),
                AtomaOpener(session, sealed, self.receipts))


class AtomaKeys(discovery.StaticKeys):
    """Client side: the node's keys at `NODE_PATH`, bound as `atoma-node-x25519` and
    `atoma-signing-ed25519`. `api_key`: the platform API key sent as Bearer, which a
    gateway with accounts requires."""

    name = NAME
    sealed_models = False

    def __init__(self, api_key: str | None = None,
                 keep_receipt: Callable[[Receipt, bytes | None], None] | None = None) -> None:
        self._api_key, self._keep_receipt = api_key, keep_receipt
        self.credential = api_key is not None

    def lookups(self) -> tuple[OuterRequest, ...]:
        return (OuterRequest("GET", NODE_PATH),)

    def candidate(self, index: int, response: OuterResponse) -> AtomaClient:
        return AtomaClient.from_node_info(discovery.answered(response), api_key=self._api_key,
                                          keep_receipt=self._keep_receipt)

    def vouched(self, candidate: Any, bound: Mapping[str, bytes]) -> bool:
        if not (isinstance(candidate, AtomaClient) and candidate.node_keys == (
                bound.get("atoma-node-x25519"), bound.get("atoma-signing-ed25519"))):
            return False
        candidate.receipts.attest(bound)
        return True


def client(setup: ClientSetup) -> AtomaKeys:
    return AtomaKeys(setup.api_key, setup.keep_receipt)
