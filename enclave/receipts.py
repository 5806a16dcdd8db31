"""Receipts: the gateway's signed word for one answer, so a user can prove afterwards what
answered them and that the answer they hold is the one the enclave produced.

    receipt = {"v": 1, "request": hex SHA-256 of the sealed request as received,
               "response": hex SHA-256 of the answer's plaintext as the client opens it
                           (a stream's content chunks, in order),
               "model": the model that answered, "model_digest": its digest,
               "workload": the gateway's workload digest (hex), "time": Unix seconds,
               "epoch": the id of the key the request was sealed to,
               "sig": base64url Ed25519 over the JCS form of all the other members}
    wire    = base64url(JCS(receipt)), carried inside the encryption, where each dialect's
              own clients skip it:
              OHTTP      the inner Binary HTTP response's trailer field `cloister-receipt`
              EHBP       a whole JSON answer's last member, `,"cloister_receipt":"<wire>"}`
                         written into the sealed body (`with_receipt`); a stream's last
                         frame, the SSE comment event `: cloister-receipt <wire>\n\n`
                         (`receipt_event`), after `data: [DONE]`
              Atoma      the same last member, in the sealed plaintext of a whole answer
                         and of a stream's authenticated end chunk
              Continuum  (only `choices` or `data` is sealed) a member `cloister_receipt`
                         beside it, sealed as a field of its own at the final position
              The client takes it out before it digests and passes the answer on; what the
              response digest covers is each dialect's module docstring.

JCS (RFC 8785) JSON over COSE_Sign1: one canonical form that `jq` can read and every
language can rebuild, with the JCS library the project already uses; Ed25519 for small,
deterministic signatures. The signing key is made in the enclave at start and bound in the
attestation report as `receipt-ed25519`, so a receipt is worth what the report is.
Sans-IO: `ReceiptSigner` signs, `ReceiptIssuer` makes one `PendingReceipt` per request
that a responder which `CarriesReceipts` signs at the end of its answer, `verify` checks
one against what the client sent and got, and a client dialect's `Receipts` does that for
each answer and keeps those that held.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave.errors import UnauthenticatedAnswer

VERSION = 1
TRAILER = "cloister-receipt"
BOUND_KEY = "receipt-ed25519"
_FIELDS = ("v", "request", "response", "model", "model_digest", "workload", "time", "epoch")
MAX_RECEIPT_SIZE = 4096


class ReceiptError(Exception):
    """A receipt that does not hold: `reason` says which check refused it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(fields: dict[str, Any]) -> bytes:
    """JCS (RFC 8785) of a receipt's members. For ASCII member names, strings and integers
    below 2**53, which is all a receipt holds, JCS is sorted compact JSON with non-ASCII
    left as UTF-8 (checked against `rfc8785` in the tests), at a third of its cost; for
    anything else, `rfc8785` itself."""
    if all(type(v) is str or (type(v) is int and abs(v) < 2**53) for v in fields.values()):
        try:
            return json.dumps(fields, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate: rfc8785 says what it says of it
            pass
    return rfc8785.dumps(fields)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Receipt:
    fields: dict[str, Any]  # every member but the signature
    signature: bytes

    @property
    def wire(self) -> str:
        return _b64(canonical({**self.fields, "sig": _b64(self.signature)}))

    @classmethod
    def parse(cls, wire: str) -> Receipt:
        if len(wire) > MAX_RECEIPT_SIZE:
            raise ReceiptError("receipt_malformed")
        try:
            whole = json.loads(_unb64(wire))
            signature = _unb64(whole.pop("sig"))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise ReceiptError("receipt_malformed") from None
        if set(whole) != set(_FIELDS) or whole["v"] != VERSION:
            raise ReceiptError("receipt_malformed")
        return cls(whole, signature)

    def signed_bytes(self) -> bytes:
        return canonical(self.fields)

    def check_signature(self, key: bytes | None) -> None:
        """Signed by `key` (raw Ed25519 public key), else `ReceiptError`."""
        if key is None:
            raise ReceiptError("receipt_key_not_attested")
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(self.signature, self.signed_bytes())
        except (InvalidSignature, ValueError):
            raise ReceiptError("receipt_signature_invalid") from None


class ReceiptSigner:
    """The gateway side: one key per process, its public half bound in the report."""

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self._key = key or Ed25519PrivateKey.generate()

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def sign(self, *, request: str, response: str, model: str, model_digest: str,
             workload: str, time: int, epoch: int) -> Receipt:
        fields: dict[str, Any] = {
            "v": VERSION, "request": request, "response": response, "model": model,
            "model_digest": model_digest, "workload": workload, "time": time, "epoch": epoch}
        return Receipt(fields, self._key.sign(canonical(fields)))


def verify(wire: str | None, *, bound_key: bytes | None, request: bytes,
           response_digest: str, signed: bool = True) -> Receipt:
    """The receipt of an answer, checked: signed by the key the report bound, for the
    sealed request the client sent and the plaintext it opened (`response_digest`, hex
    SHA-256). `signed=False` only for a gateway nobody verified (development): then the
    signature cannot mean anything and only the digests are checked. `ReceiptError`
    otherwise."""
    if wire is None:
        raise ReceiptError("receipt_missing")
    receipt = Receipt.parse(wire)
    if signed:
        receipt.check_signature(bound_key)
    if receipt.fields["request"] != digest(request):
        raise ReceiptError("receipt_request_mismatch")
    if receipt.fields["response"] != response_digest:
        raise ReceiptError("receipt_response_mismatch")
    return receipt


class PendingReceipt:
    """The receipt of one request, signed when its answer is complete: the dialect's
    responder calls it with the digest of the plaintext it sealed."""

    def __init__(self, issuer: ReceiptIssuer, request: bytes) -> None:
        self._issuer, self._request = issuer, digest(request)
        self.model = ""  # set once the gateway knows which model answers

    def __call__(self, response_digest: str) -> str:
        issuer = self._issuer
        wire = issuer.signer.sign(
            request=self._request, response=response_digest, model=self.model,
            model_digest=issuer.model_digests.get(self.model, ""), workload=issuer.workload,
            time=int(issuer.clock()), epoch=issuer.epoch()).wire
        if issuer.logged is not None:
            issuer.logged(wire)
        return wire


class ReceiptIssuer:
    """The gateway's receipts: its signer and what every receipt says of the gateway."""

    def __init__(self, signer: ReceiptSigner, *, workload: str,
                 model_digests: dict[str, str], epoch: Any, clock: Any,
                 logged: Callable[[str], None] | None = None) -> None:
        """`logged`: called with each receipt signed (the transparency log's append)."""
        self.signer, self.workload, self.model_digests = signer, workload, model_digests
        self.epoch, self.clock, self.logged = epoch, clock, logged

    def pending(self, request: bytes) -> PendingReceipt:
        return PendingReceipt(self, request)


@runtime_checkable
class CarriesReceipts(Protocol):
    """A responder that carries a receipt inside its encryption."""

    def sign_with(self, receipt: PendingReceipt) -> None: ...


# --- where a dialect has no trailer: the receipt in a form its own clients skip -----------

MEMBER = "cloister_receipt"  # a JSON answer's last member; Continuum's sealed member
_MEMBER_HEAD = b'"' + MEMBER.encode() + b'":"'
_EVENT_HEAD = b": cloister-receipt "  # an SSE comment: parsers skip it (WHATWG HTML 9.2.6)
_WIRE = re.compile(rb"[A-Za-z0-9_-]+")


def receipt_event(wire: str) -> bytes:
    """The SSE comment event that carries a receipt after a stream's last event."""
    return _EVENT_HEAD + wire.encode() + b"\n\n"


def receipt_of_event(data: bytes) -> str | None:
    """The receipt `data` carries if it is exactly one receipt event, else None."""
    wire = data[len(_EVENT_HEAD):-2]
    if data.startswith(_EVENT_HEAD) and data.endswith(b"\n\n") and _WIRE.fullmatch(wire):
        return wire.decode()
    return None


def with_receipt(body: bytes, wire: str) -> bytes:
    """The JSON object `body` with the receipt written in as its last member (whitespace
    after the object, padding, stays after it); unchanged if it is not an object."""
    value = body.rstrip()
    if not (value.startswith(b"{") and value.endswith(b"}")):
        return body
    comma = b"" if value[:-1].rstrip().endswith(b"{") else b","
    return value[:-1] + comma + _MEMBER_HEAD + wire.encode() + b'"}' + body[len(value):]


def split_receipt(body: bytes) -> tuple[bytes, str | None]:
    """Client side: `body` as it was before `with_receipt`, and the receipt (None, and
    `body` unchanged, where it carries none)."""
    value = body.rstrip()
    start = value.rfind(_MEMBER_HEAD)
    wire = value[start + len(_MEMBER_HEAD):-2]
    if start < 0 or not value.endswith(b'"}') or not _WIRE.fullmatch(wire):
        return body, None
    head = value[:start]
    return head.removesuffix(b",") + b"}" + body[len(value):], wire.decode()


class Receipts:
    """Client side, for every dialect: how an answer's receipt is checked (`verify`), and
    the receipts of the answers that held. `key` is the receipt key the attestation report
    bound (`attest`): with it a receipt is required and its signature checked; without it
    (an unverified gateway, for development) only what a receipt present says is checked."""

    def __init__(self, *, keep: int = 1000,
                 sink: Callable[[Receipt, bytes | None], None] | None = None) -> None:
        self.key: bytes | None = None
        self.required = False
        self.kept: collections.deque[Receipt] = collections.deque(maxlen=keep)
        self._sink = sink

    def attest(self, bound: Mapping[str, bytes]) -> None:
        """The gateway's report verified: its answers carry receipts by the key it binds."""
        self.key, self.required = bound.get(BOUND_KEY), True

    def check(self, wire: str | None, request: bytes, content_digest: str) -> None:
        """The receipt `wire` of an answer (None: it carries none), for the sealed `request`
        sent and the plaintext opened (its SHA-256, hex); `UnauthenticatedAnswer` when it
        does not hold."""
        if wire is None and not self.required:
            return
        try:
            receipt = verify(wire, bound_key=self.key, request=request,
                             response_digest=content_digest, signed=self.required)
        except ReceiptError as exc:
            raise UnauthenticatedAnswer(f"the gateway's receipt does not hold ({exc.reason})"
                                        ) from None
        self.kept.append(receipt)
        if self._sink is not None:
            self._sink(receipt, self.key)
