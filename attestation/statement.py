"""Release statements: reference values signed by a release key.

    statement  an in-toto Statement v1 (https://in-toto.io/Statement/v1): one subject per
               accepted workload digest ({"name": "cloister-workload", "digest":
               {"sha256": hex}}), predicateType "https://cloister.dev/reference-values/v1",
               predicate = the reference values (`attestation.reference`), with a
               `version` and a `valid_until`
    envelope   DSSE (https://github.com/secure-systems-lab/dsse): {"payloadType":
               "application/vnd.in-toto+json", "payload": base64(statement),
               "signatures": [{"keyid", "sig"}]}; a signature is over
               PAE = "DSSEv1" SP len(type) SP type SP len(payload) SP payload
    release key  ECDSA P-256 (SHA-256) or Ed25519, PEM; its key id is the SHA-256 of its
               DER SubjectPublicKeyInfo, hex

Verification checks a signature by a trusted key, the statement's shape, that its
subjects are its workloads, and that it has not expired. Version rollback is the
client's to check against what it accepted before (`proxy.statements`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from attestation.errors import BelowPolicyFloor, Reason, VerificationError
from attestation.reference import ReferenceValues

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://cloister.dev/reference-values/v1"
SUBJECT_NAME = "cloister-workload"
# A statement is a few KiB; anything near this is not one.
MAX_ENVELOPE_SIZE = 1 << 20

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(key: PublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def generate_key(kind: str = "ecdsa-p256") -> PrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key kind {kind!r} (ecdsa-p256 or ed25519)")


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError("a release key is ECDSA P-256 or Ed25519")
    return key


def load_public_keys(pem: bytes) -> dict[str, PublicKey]:
    """Every public key in `pem` (a file may hold several), by key id."""
    out: dict[str, PublicKey] = {}
    for block in _pem_blocks(pem, b"PUBLIC KEY"):
        key = serialization.load_pem_public_key(block)
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise ValueError("a release key is ECDSA P-256 or Ed25519")
        out[key_id(key)] = key
    return out


def _pem_blocks(pem: bytes, label: bytes) -> list[bytes]:
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    blocks, start = [], pem.find(begin)
    while start >= 0:
        stop = pem.find(end, start)
        if stop < 0:
            break
        blocks.append(pem[start:stop + len(end)] + b"\n")
        start = pem.find(begin, stop)
    return blocks


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _verify(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def statement(values: ReferenceValues) -> dict[str, Any]:
    if values.valid_until is None:
        raise ValueError("a release statement needs a valid_until")
    if not values.workloads:
        raise ValueError("a release statement names at least one workload digest")
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": SUBJECT_NAME, "digest": {"sha256": w}}
                        for w in sorted(values.workloads)],
            "predicateType": PREDICATE_TYPE, "predicate": values.to_json()}


def sign_statement(values: ReferenceValues, key: PrivateKey) -> bytes:
    """The DSSE envelope (JSON) of a statement of `values`, signed with `key`."""
    payload = json.dumps(statement(values), sort_keys=True).encode()
    signature = _sign(key, pae(PAYLOAD_TYPE, payload))
    return json.dumps({"payloadType": PAYLOAD_TYPE,
                       "payload": base64.b64encode(payload).decode(),
                       "signatures": [{"keyid": key_id(key.public_key()),
                                       "sig": base64.b64encode(signature).decode()}]},
                      indent=2).encode()


@dataclass(frozen=True)
class VerifiedStatement:
    values: ReferenceValues
    digest: str   # SHA-256 of the signed payload, hex: what the client's log records
    key_id: str   # the trusted key that signed it


def verify_statement(envelope: bytes, trusted: Mapping[str, PublicKey], *,
                     now: dt.datetime) -> VerifiedStatement:
    """A DSSE envelope signed by one of the `trusted` keys."""
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise VerificationError(Reason.MALFORMED, "statement too large")
    try:
        outer = json.loads(envelope)
        payload = base64.b64decode(outer["payload"], validate=True)
        signatures = [(str(s["keyid"]), base64.b64decode(s["sig"], validate=True))
                      for s in outer["signatures"]]
        kind = outer["payloadType"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise VerificationError(Reason.MALFORMED, "malformed statement envelope") from exc
    if kind != PAYLOAD_TYPE:
        raise VerificationError(Reason.UNSUPPORTED, f"statement payload type {kind!r}")
    signer = _signer(signatures, trusted, pae(kind, payload))
    return checked_statement(payload, signer, now=now)


def checked_statement(payload: bytes, signer: str, *, now: dt.datetime) -> VerifiedStatement:
    """A signed statement's payload, checked for shape and expiry."""
    values = _values(payload)
    assert values.valid_until is not None
    if values.valid_until <= now:
        raise VerificationError(Reason.STATEMENT_EXPIRED,
                                f"the statement expired at {values.valid_until:%Y-%m-%dT%H:%MZ}")
    return VerifiedStatement(values, hashlib.sha256(payload).hexdigest(), signer)


def _signer(signatures: list[tuple[str, bytes]], trusted: Mapping[str, PublicKey],
            signed: bytes) -> str:
    known = [(kid, sig) for kid, sig in signatures if kid in trusted]
    if not known:
        raise VerificationError(Reason.STATEMENT_UNTRUSTED,
                                "the statement is not signed by a trusted release key")
    for kid, sig in known:
        if _verify(trusted[kid], sig, signed):
            return kid
    raise VerificationError(Reason.STATEMENT_SIGNATURE, "the statement's signature is invalid")


def _values(payload: bytes) -> ReferenceValues:
    try:
        body = json.loads(payload)
        if body["_type"] != STATEMENT_TYPE or body["predicateType"] != PREDICATE_TYPE:
            raise ValueError("not a Cloister reference-values statement")
        subjects = {s["digest"]["sha256"].lower() for s in body["subject"]
                    if s["name"] == SUBJECT_NAME}
        values = ReferenceValues.parse(body["predicate"])
    except BelowPolicyFloor as exc:
        raise VerificationError(Reason.POLICY_FLOOR, str(exc)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(Reason.MALFORMED, "malformed statement") from exc
    if values.valid_until is None or not values.workloads or subjects != values.workloads:
        raise VerificationError(Reason.MALFORMED, "the statement's subjects are not its "
                                "workloads, or it has no valid_until")
    return values


def load_values(path: Path, *, now: dt.datetime) -> ReferenceValues:
    """VALUES.toml (or .json) for `cloister release sign`: `valid_days` (default 7)
    stands for a `valid_until` that many days from `now`."""
    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    if "valid_until" not in raw:
        raw["valid_until"] = now + dt.timedelta(days=float(raw.pop("valid_days", 7)))
    return ReferenceValues.parse(raw)
