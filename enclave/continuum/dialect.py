"""The Continuum dialect over the dialect interface (`enclave.dialect`), both sides.

    POST /v1/secrets                         register an inference secret (HPKE-sealed)
    POST /v1/chat/completions, /v1/completions, /v1/embeddings
                                             the prompt field an encrypted string

Plaintext stays plaintext where the seed says so (`id`, `model`, `usage`, `created`,
`/v1/models`); everything the prompt or the completion is made of travels sealed
(`enclave.continuum.fields`). The seed's clients seal the prompt field only, so a relay
could rewrite `max_tokens`, `logit_bias` or `tools` beside it; ours seals the whole
request but `model` in the prompt field, with the digest of the clear fields (RFC 8785),
and the gateway refuses such a request whose clear fields were added to or changed.
A stream ends with a sealed message carrying the final flag, then `data: [DONE]`. The
seed's error bodies are plaintext, so an engine's message never appears in them (only
its stable code); the whole error travels sealed beside it in `encrypted_error`, which
our client opens and passes on.

Receipts (`enclave.receipts`): only `choices` (or `data`, or the error) is sealed, so the
receipt is a member of its own beside it, `cloister_receipt`, sealed as a field (its name
in the AAD) at the final position: a whole answer's (seq 0) or a stream's final message's.
The seed's clients ignore members they do not know; the relay can delete it, but not
unseen: our attested client then refuses the answer. As the clear members (`id`, `model`,
`created`, `usage`) are not sealed, the response digest covers the answer as the client
reassembles it: SHA-256 of the JCS form (RFC 8785) of each answer object with its sealed
field opened and without the receipt, concatenated over a stream's messages, the final one
included; for an error, of the sealed error as opened. A relay that changes a clear member
is then refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785

import enclave.continuum.pq as pq
from enclave import discovery, sse
from enclave.continuum.fields import (
    PROMPT_FIELDS,
    RESULT_FIELDS,
    SECRET_SIZE,
    FieldCipher,
    SealedField,
    SecretStore,
    is_encrypted_field,
    open_secret,
    seal_secret,
    seal_secret_hybrid,
)
from enclave.dialect import (
    SENT_AT_FIELD,
    ClientDialect,
    ControlRoute,
    EngineRoute,
    InnerRequest,
    InnerResponse,
    OuterRequest,
    OuterResponse,
    Registration,
    json_response,
    plain_refusal,
    refusal,
    take_sent_at,
)
from enclave.engine import PROMPT_ROUTES
from enclave.errors import (
    InvalidJson,
    MalformedRequest,
    RequestRefused,
    UnauthenticatedAnswer,
)
from enclave.event_stream import SealedEventsOpener, SealedEventsResponder
from enclave.keys import KeyRing
from enclave.ohttp.dialect import PATH as OHTTP_PATH
from enclave.ohttp.keyconfig import KeyConfig, encode_key_configs
from enclave.padding import DEFAULT_PADDING, PaddingPolicy
from enclave.plugin import ClientSetup, DialectSetup
from enclave.receipts import MEMBER as RECEIPT_MEMBER
from enclave.receipts import Receipt, Receipts, digest
from enclave.wire_errors import ErrorCode, code_of, error_json

NAME = "continuum"
# Our client's requests: the prompt field holds the whole request but these clear fields
# (`BOUND_REQUEST`) and their canonical digest (`BOUND_CLEAR`).
CLEAR_FIELDS = ("model",)
BOUND_REQUEST = "cloister_request"
BOUND_CLEAR = "cloister_clear_sha256"
SECRETS_PATH = "/v1/secrets"
HYBRID_KEY_PATH = "/v1/secrets/key"
ERROR_FIELD = "encrypted_error"
# A sealed 32-byte secret with its framing is well under 1 KiB.
MAX_SECRET_BODY = 4096


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidJson() from None
    if not isinstance(value, dict):
        raise InvalidJson("request body must be a JSON object")
    return value


def _canonical(answer: Any) -> bytes:
    """What a receipt's digest covers of an answer object: its JCS form (RFC 8785), or,
    where it holds a number JCS cannot write (NaN, an integer past 2**53), sorted compact
    JSON; both sides reassemble the same object, so both take the same branch."""
    try:
        return rfc8785.dumps(answer)
    except rfc8785.CanonicalizationError:
        return json.dumps(answer, sort_keys=True, separators=(",", ":")).encode()


# --- server side ---------------------------------------------------------------------------

class ContinuumResponder(SealedEventsResponder):
    def __init__(self, cipher: FieldCipher, field: str) -> None:
        super().__init__()
        self._cipher, self._field = cipher, field
        self._seq = 0

    def whole(self, status: int, content_type: str, body: bytes) -> OuterResponse:
        if status != 200:
            return self.error(status, body)
        obj = json.loads(body)
        value = obj.get(self._field)
        obj[self._field] = self._cipher.seal_response(
            self._field, 0, self.padding.pad_json(json.dumps(value).encode()), final=True)
        if self._receipt is not None:
            self._seal_receipt(obj, 0, digest(_canonical({**obj, self._field: value})))
        return self._outer(200, json.dumps(obj).encode())

    def error(self, status: int, error: bytes) -> OuterResponse:
        code = ErrorCode(code_of(error) or ErrorCode.ENGINE_ERROR)
        redacted = json.loads(error_json(code, f"the engine rejected the request ({code})"))
        padded = self.padding.pad_json(error)
        redacted[ERROR_FIELD] = self._cipher.seal_response(ERROR_FIELD, 0, padded, final=True)
        if self._receipt is not None:
            self._seal_receipt(redacted, 0, digest(padded))
        return self._outer(status, json.dumps(redacted).encode())

    def _seal_event(self, payload: bytes, *, final: bool) -> bytes:
        obj = json.loads(payload)
        value = obj.get(self._field, [])
        obj[self._field] = self._cipher.seal_response(
            self._field, self._seq, self.padding.pad_json(json.dumps(value).encode()),
            final=final)
        if self._receipt is not None:
            self._content.update(_canonical({**obj, self._field: value}))
            if final:
                self._seal_receipt(obj, self._seq, self._content.hexdigest())
        self._seq += 1
        return sse.event(json.dumps(obj).encode())

    def _seal_receipt(self, answer: dict[str, Any], seq: int, response_digest: str) -> None:
        assert self._receipt is not None
        answer[RECEIPT_MEMBER] = self._cipher.seal_response(
            RECEIPT_MEMBER, seq, self._receipt(response_digest).encode(), final=True)


def server(setup: DialectSetup) -> ContinuumServer:
    """Its hybrid (ML-KEM-768 + X25519) key from the fleet's seed in a fleet."""
    hybrid = None
    if setup.derive is not None:
        hybrid = pq.HybridKey(mlkem_seed=setup.derive("continuum-mlkem768", 64),
                              x25519_private=setup.derive("continuum-x25519", 32))
    return ContinuumServer(setup.keyring, SecretStore(per_owner=setup.secrets_per_client),
                           hybrid)


class ContinuumServer:
    name = NAME
    end_authenticated = True

    def __init__(self, keyring: KeyRing, secrets: SecretStore,
                 hybrid: pq.HybridKey | None = None) -> None:
        self._keyring, self.secrets = keyring, secrets
        self._hybrid = hybrid or pq.HybridKey()

    def accepts(self, request: OuterRequest) -> bool:
        field = PROMPT_FIELDS.get(request.path)
        if request.method != "POST" or field is None:
            return False
        payload = request.json_object
        return payload is not None and is_encrypted_field(payload.get(field))

    def published_keys(self) -> dict[str, bytes]:
        # Secrets are sealed to the enclave's HPKE key (the OHTTP key configuration), or
        # to its hybrid post-quantum key (`enclave.continuum.pq`).
        return {"continuum": encode_key_configs(self._keyring.key_configs()),
                pq.KEY_NAME: self._hybrid.public_bytes}

    def engine_routes(self) -> tuple[EngineRoute, ...]:
        return tuple(EngineRoute(*route) for route in PROMPT_ROUTES)

    def control_routes(self) -> tuple[ControlRoute, ...]:
        """Registering a secret is anonymous and costs a KEM decapsulation: rate-limited
        per client, and each client holds a bounded number (`SecretStore`)."""
        return (ControlRoute("POST", SECRETS_PATH, lambda call: self.register_secret(
                    call.request, owner=call.client), max_body=MAX_SECRET_BODY,
                    rate_limited=True),
                ControlRoute("GET", HYBRID_KEY_PATH, lambda call: self.hybrid_key()))

    def hybrid_key(self) -> OuterResponse:
        """`GET /v1/secrets/key`: the ML-KEM-768 + X25519 key secrets may be sealed to."""
        return json_response(200, json.dumps({"kem": pq.KEM_NAME,
                                              "public_key": self._hybrid.public_bytes.hex()
                                              }).encode())

    def register_secret(self, request: OuterRequest, owner: str = "") -> OuterResponse:
        """`POST /v1/secrets`: raises `RequestRefused` for a body that does not open.
        `owner` (the client) bounds how many secrets one client holds (`SecretStore`)."""
        if len(request.body) > MAX_SECRET_BODY:
            raise MalformedRequest("the secret registration is too large")
        secret = open_secret(self._keyring, _object(request.body), self._hybrid)
        secret_id, expires = self.secrets.register(secret, owner)
        return json_response(200, json.dumps({"secret_id": secret_id,
                                              "expires_at": expires}).encode())

    def open(self, request: OuterRequest) -> tuple[InnerRequest, ContinuumResponder]:
        if request.json_object is None:
            _object(request.body)  # raises the reason
        payload = dict(request.json_object or {})  # a copy: its sealed fields are opened
        field = PROMPT_FIELDS.get(request.path)
        if field is None or field not in payload:
            raise MalformedRequest("no sealed prompt field for this route")
        first = SealedField.parse(payload[field])
        secret = self.secrets.get(first.secret_id)
        cipher = FieldCipher(first.secret_id, secret, first.request_nonce)
        for name, value in list(payload.items()):
            if is_encrypted_field(value):
                try:
                    payload[name] = json.loads(cipher.open_request_field(name, value))
                except (ValueError, UnicodeDecodeError):
                    raise MalformedRequest(f"sealed field `{name}` is not JSON") from None
        payload, sent_at = _unbound(payload, field, request.json_object or {})
        unique = first.secret_id.encode() + first.request_nonce + first.iv
        inner = InnerRequest("POST", request.path, replay_id=unique, sent_at=sent_at,
                             tenant=first.secret_id.encode()).with_payload(payload)
        return (inner,
                ContinuumResponder(cipher, RESULT_FIELDS[request.path]))

    def refuse(self, error: RequestRefused) -> OuterResponse:
        return plain_refusal(error)


def _unbound(opened: dict[str, Any], field: str, sent: Mapping[str, Any]
             ) -> tuple[dict[str, Any], float | None]:
    """The request our client sealed whole inside the prompt field (`BOUND_REQUEST`), its
    clear fields checked against the digest sealed beside it, and the time sealed with it;
    any other request as the seed's clients send it (no time). `MalformedRequest` when a
    clear field was added or changed."""
    prompt = opened.get(field)
    if not isinstance(prompt, dict) or BOUND_REQUEST not in prompt:
        return opened, None
    inner, digest = prompt.get(BOUND_REQUEST), prompt.get(BOUND_CLEAR)
    clear = {k: v for k, v in sent.items() if k != field}
    if not isinstance(inner, dict) or digest != clear_digest(clear):
        raise MalformedRequest("a field outside the sealed request was added or changed")
    return {**inner, **clear}, take_sent_at(dict(prompt))


def clear_digest(clear: Mapping[str, Any]) -> str:
    """SHA-256 of the clear fields' canonical JSON (RFC 8785): what the client seals."""
    return hashlib.sha256(rfc8785.dumps(dict(clear))).hexdigest()


# --- client side ---------------------------------------------------------------------------

class ContinuumOpener(SealedEventsOpener):
    def __init__(self, cipher: FieldCipher, field: str, sent: bytes, receipts: Receipts
                 ) -> None:
        super().__init__(sent, receipts)
        self._cipher, self._field = cipher, field
        self._seq = 0

    def _check_receipt(self, sealed: Any, seq: int, response_digest: str) -> None:
        """The receipt `sealed` beside the final message at `seq` (None: none came)."""
        wire = None if sealed is None else self._cipher.open_response(
            RECEIPT_MEMBER, seq, sealed, final=True).decode()
        self._receipts.check(wire, self._sent, response_digest)

    def whole(self, response: OuterResponse) -> InnerResponse:
        try:
            obj = json.loads(response.body)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if not isinstance(obj, dict):
            raise refusal(response)
        try:
            if response.status == 200:
                obj[self._field] = json.loads(self._cipher.open_response(
                    self._field, 0, obj.get(self._field), final=True))
                sealed = obj.pop(RECEIPT_MEMBER, None)
                self._check_receipt(sealed, 0, digest(_canonical(obj)))
                return InnerResponse(200, "application/json", json.dumps(obj).encode())
            if ERROR_FIELD in obj and 400 <= response.status < 600:
                error = self._cipher.open_response(ERROR_FIELD, 0, obj[ERROR_FIELD],
                                                   final=True)
                self._check_receipt(obj.get(RECEIPT_MEMBER), 0, digest(error))
                return InnerResponse(response.status, "application/json", error)
        except (RequestRefused, ValueError) as exc:
            raise UnauthenticatedAnswer("the gateway's answer failed to open") from exc
        raise refusal(response)

    def _open_event(self, payload: bytes) -> tuple[bytes | None, bool]:
        """The message at the next sequence number: a regular one or the final one."""
        try:
            obj = json.loads(payload)
            value = obj.get(self._field)
        except (ValueError, AttributeError) as exc:
            raise UnauthenticatedAnswer("a chunk of the stream is malformed") from exc
        for final in (False, True):
            try:
                opened = self._cipher.open_response(self._field, self._seq, value, final=final)
            except RequestRefused:
                continue
            self._seq += 1
            try:
                obj[self._field] = json.loads(opened)
                sealed = obj.pop(RECEIPT_MEMBER, None) if final else None
                self._content.update(_canonical(obj))
                if final:
                    self._check_receipt(sealed, self._seq - 1, self._content.hexdigest())
            except (ValueError, RequestRefused) as exc:
                raise UnauthenticatedAnswer("a chunk of the stream is malformed") from exc
            if final:
                return None, True
            return sse.event(json.dumps(obj).encode()), False
        raise UnauthenticatedAnswer("a chunk of the stream failed to open (tampered or "
                                    "reordered)")


class ContinuumClient:
    """The client side, for one registered inference secret."""

    name = NAME

    def __init__(self, secret_id: str, secret: bytes, *,
                 padding: PaddingPolicy = DEFAULT_PADDING,
                 receipts: Receipts | None = None) -> None:
        self.secret_id, self._secret, self._padding = secret_id, secret, padding
        self.receipts = Receipts() if receipts is None else receipts

    def __repr__(self) -> str:
        return f"ContinuumClient(secret_id={self.secret_id}, secret=[redacted])"

    def seal(self, request: InnerRequest, *, stream: bool
             ) -> tuple[OuterRequest, ContinuumOpener]:
        field = PROMPT_FIELDS.get(request.path)
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            payload = None
        if field is None or not isinstance(payload, dict) or field not in payload:
            raise ValueError(f"a Continuum request to {request.path} needs `{field}`")
        cipher = FieldCipher.for_client(self.secret_id, self._secret)
        # Everything but what the seed's wire format needs in the clear (`model`) goes
        # sealed in the prompt field, with the clear fields' digest: a field rewritten,
        # added or dropped on the way is refused (the seed's clients seal the prompt only).
        clear = {k: payload[k] for k in CLEAR_FIELDS if k in payload}
        whole = {BOUND_REQUEST: {k: v for k, v in payload.items() if k not in clear},
                 BOUND_CLEAR: clear_digest(clear), SENT_AT_FIELD: int(time.time())}
        sealed = json.dumps({**clear, field: cipher.seal_request_field(
            field, self._padding.pad_json(json.dumps(whole).encode()))}).encode()
        return (OuterRequest("POST", request.path, (("content-type", "application/json"),),
                             sealed),
                ContinuumOpener(cipher, RESULT_FIELDS[request.path], sealed, self.receipts))


# Register a new secret this long before the old one expires.
RENEW_MARGIN_SECONDS = 60


@dataclass(frozen=True)
class HybridPublicKey:
    """The gateway's ML-KEM-768 + X25519 key for the secret exchange."""

    public_bytes: bytes


class ContinuumKeys:
    """Client side: the key a secret is sealed to (the hybrid post-quantum key at
    `HYBRID_KEY_PATH` where the gateway offers one, bound as `continuum-hybrid`; else the
    OHTTP key configuration, bound as `continuum`), then the secret registered."""

    name = NAME
    sealed_models = False
    credential = False

    def __init__(self, keep_receipt: Callable[[Receipt, bytes | None], None] | None = None
                 ) -> None:
        self._expires: dict[str, float] = {}
        self.receipts = Receipts(sink=keep_receipt)  # shared by the secrets registered

    def lookups(self) -> tuple[OuterRequest, ...]:
        return (OuterRequest("GET", HYBRID_KEY_PATH), OuterRequest("GET", OHTTP_PATH))

    def candidate(self, index: int, response: OuterResponse) -> Any:
        if index == 0:
            if response.status != 200:
                return None
            try:
                offered = json.loads(response.body)
                if offered["kem"] != pq.KEM_NAME:
                    return None
                return HybridPublicKey(bytes.fromhex(offered["public_key"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise UnauthenticatedAnswer("malformed hybrid key") from exc
        return discovery.first(discovery.key_configs(discovery.answered(response)))

    def vouched(self, candidate: Any, bound: Mapping[str, bytes]) -> bool:
        attested_hybrid = bound.get(pq.KEY_NAME)
        if isinstance(candidate, HybridPublicKey):
            vouched = candidate.public_bytes == attested_hybrid
        else:
            # The classic key only from a gateway that attests no hybrid one: whoever hid
            # the hybrid key from us does not get a downgrade.
            vouched = (isinstance(candidate, KeyConfig) and attested_hybrid is None
                       and candidate in discovery.bound_configs(bound, "continuum"))
        if vouched:
            self.receipts.attest(bound)
        return vouched

    def ready(self, candidate: Any) -> Registration:
        secret = os.urandom(SECRET_SIZE)
        if isinstance(candidate, HybridPublicKey):
            sealed = seal_secret_hybrid(candidate.public_bytes, secret)
        else:
            assert isinstance(candidate, KeyConfig)
            sealed = seal_secret(candidate, secret)
        request = OuterRequest("POST", SECRETS_PATH, (("content-type", "application/json"),),
                               json.dumps(sealed).encode())

        def registered(response: OuterResponse) -> ContinuumClient:
            body = discovery.answered(response)
            try:
                info = json.loads(body)
                client = ContinuumClient(str(info["secret_id"]), secret,
                                         receipts=self.receipts)
                self._expires[client.secret_id] = float(info["expires_at"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise UnauthenticatedAnswer("malformed secret registration") from exc
            return client

        return Registration(request, registered)

    def expired(self, dialect: ClientDialect) -> bool:
        if not isinstance(dialect, ContinuumClient):
            return True
        expires = self._expires.get(dialect.secret_id, 0.0)
        return expires - time.time() < RENEW_MARGIN_SECONDS


def client(setup: ClientSetup) -> ContinuumKeys:
    return ContinuumKeys(setup.keep_receipt)
