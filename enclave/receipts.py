"""Receipts: the gateway's signed word for one answer, so a user can prove afterwards what
answered them and that the answer they hold is the one the enclave produced.

    receipt = {"v": 1, "request": hex SHA-256 of the sealed request as received,
               "response": hex SHA-256 of the answer's plaintext as the client opens it
                           (a stream's content chunks, in order),
               "model": the model that answered, "model_digest": its digest,
               "workload": the gateway's workload digest (hex), "time": Unix seconds,
               "epoch": the id of the key the request was sealed to,
               "sig": base64url Ed25519 over the JCS form of all the other members}
    wire    = base64url(JCS(receipt)), carried inside the encryption (OHTTP: the inner
              Binary HTTP response's trailer field `cloister-receipt`)

JCS (RFC 8785) JSON over COSE_Sign1: one canonical form that `jq` can read and every
language can rebuild, with the JCS library the project already uses; Ed25519 for small,
deterministic signatures. The signing key is made in the enclave at start and bound in the
attestation report as `receipt-ed25519`, so a receipt is worth what the report is.
Sans-IO: `ReceiptSigner` signs, `ReceiptIssuer` makes one `PendingReceipt` per request
that a responder which `CarriesReceipts` signs at the end of its answer, `verify` checks
one against what the client sent and got.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

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


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Receipt:
    fields: dict[str, Any]  # every member but the signature
    signature: bytes

    @property
    def wire(self) -> str:
        return _b64(rfc8785.dumps({**self.fields, "sig": _b64(self.signature)}))

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
        return rfc8785.dumps(self.fields)

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
        return Receipt(fields, self._key.sign(rfc8785.dumps(fields)))


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
