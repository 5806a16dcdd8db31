"""Verification in one round trip: `GET /v1/attestation/bundle` answers the report over
the client's nonce (the vendors' collateral inside), the release statements, and the
gateway's latest log checkpoint with an inclusion proof per statement and a consistency
proof from the checkpoint this client kept (`proxy.logview`). The client checks all of
it with no other request: the report as `attestation.verify` does, the statements as
`proxy.attestor` does, the checkpoint by the log key the report binds, each accepted
statement's inclusion, and that the log extends the one it saw before.

Witnesses (`enclave.tlog.witness`), where the client names them, then cosign that
checkpoint: a statement is trusted only in a checkpoint every named witness cosigned no
longer ago than the client allows, so its freshness comes from the log and its witnesses
rather than from the publisher's `valid_until` alone.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from attestation.errors import VerificationError
from attestation.statement import VerifiedStatement
from attestation.verify import (
    Policy,
    VerifiedEvidence,
    verify_challenge_answer,
    verify_evidence,
)
from enclave.tlog.entries import release_leaf
from enclave.tlog.note import Checkpoint, NoteError, NoteKey, signed_time
from enclave.tlog.view import LogRefused, Verified, check_inclusion, decode_hashes, open_signed
from enclave.tlog.witness import PATH as WITNESS_PATH
from enclave.tlog.witness import SIZE_MEDIA_TYPE, add_checkpoint_body, cosignature
from proxy.errors import GatewayNotAttested
from proxy.logview import KeptLogs
from proxy.statements import accepted_statements
from proxy.trust import StatementLog, Trust

BUNDLE_PATH = "/v1/attestation/bundle"
LOG_KEY = "log-ed25519"
WITNESS_MAX_AGE = 600
# The gateway signs a checkpoint at least every 30 s: one older than this is not its
# current one. CLOCK_SKEW: how far ahead of this client's clock a checkpoint may be.
LOG_MAX_AGE = 600
CLOCK_SKEW = 300


@dataclass(frozen=True)
class Bundled:
    claims: VerifiedEvidence
    statements: list[VerifiedStatement]  # accepted, each in the checkpoint
    checkpoint: Verified


def _parse(body: bytes) -> dict[str, Any]:
    try:
        bundle = json.loads(body)
        if not (isinstance(bundle, dict) and isinstance(bundle.get("report"), str)
                and isinstance(bundle.get("statements"), list)
                and isinstance(bundle.get("checkpoint"), str)
                and isinstance(bundle.get("inclusion"), list)
                and isinstance(bundle.get("consistency"), list)):
            raise ValueError
    except ValueError:
        raise GatewayNotAttested("the attestation bundle is malformed") from None
    return bundle


def checkpoint_named(body: bytes) -> tuple[str, int] | None:
    """The origin and size of the bundle's checkpoint, unverified (to know which log the
    client must prove consistency from); None if it names none."""
    try:
        note = json.loads(body)["checkpoint"].encode()
        checkpoint = Checkpoint.parse(note[:note.index(b"\n\n") + 1])
    except (ValueError, KeyError, TypeError, AttributeError, NoteError):
        return None
    return checkpoint.origin, checkpoint.size


def verify_bundle(body: bytes, *, gateway: str, nonce: bytes, challenge: bool, trust: Trust,
                  statements: StatementLog | None, logs: KeptLogs, now: dt.datetime,
                  consistency: list[bytes] | None = None) -> Bundled:
    """`GatewayNotAttested` unless everything in the bundle holds (the log is kept as
    the new latest only then). `consistency`: the proof from the size this client kept,
    where the bundle's starts elsewhere (the log seen through another URL)."""
    bundle = _parse(body)
    served = bundle["statements"]
    accepted = ([] if trust.policy is not None else
                accepted_statements(served, trust, statements=statements, now=now))
    policy = trust.policy or Policy(tuple(v.values for _, v in accepted))
    report = bundle["report"].encode()
    try:
        claims = (verify_challenge_answer(report, challenge=nonce, roots=trust.roots,
                                          policy=policy, now=now) if challenge else
                  verify_evidence(report, expected_nonce=nonce, roots=trust.roots,
                                  policy=policy, now=now))
    except VerificationError as exc:
        raise GatewayNotAttested(f"attestation failed: {exc}") from exc
    key = claims.keys.get(LOG_KEY)
    if key is None:
        raise GatewayNotAttested("transparency log: log_key_not_attested (the report binds "
                                 "no log key)")
    try:
        verified = open_signed(bundle["checkpoint"].encode(), key)
        signed = signed_time(verified.checkpoint)
        stamp = int(now.timestamp())
        if signed is None or not stamp - LOG_MAX_AGE <= signed <= stamp + CLOCK_SKEW:
            raise LogRefused("checkpoint_stale", "the log's checkpoint is not current by "
                             "this client's clock (a replayed or frozen log)")
        for position, _ in accepted:
            proof = bundle["inclusion"][position] if position < len(bundle["inclusion"]) \
                else None
            if not isinstance(proof, dict) or not isinstance(proof.get("index"), int):
                raise LogRefused("statement_not_logged", "no inclusion proof for a statement")
            check_inclusion(verified.checkpoint, release_leaf(served[position]),
                            proof["index"], decode_hashes(proof.get("proof")))
        logs.accept(gateway, verified, key, consistency if consistency is not None
                    else decode_hashes(bundle["consistency"]))
    except LogRefused as exc:
        raise GatewayNotAttested(f"transparency log: {exc}") from None
    return Bundled(claims, [v for _, v in accepted], verified)


@dataclass(frozen=True)
class WitnessConfig:
    """A witness the client asks to cosign: its add-checkpoint prefix and its key."""

    url: str
    key: NoteKey

    @classmethod
    def parse(cls, text: str) -> WitnessConfig:
        """`URL=VKEY` (the vkey `cloister witness keygen` prints)."""
        url, sep, vkey = text.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError("a witness is URL=VKEY")
        try:
            return cls(url.rstrip("/"), NoteKey.parse_vkey(vkey))
        except NoteError as exc:
            raise ValueError(f"a witness's key: {exc.reason}") from None


async def consistency_proof(gateway: httpx.AsyncClient, first: int, second: int
                            ) -> list[bytes]:
    r = await gateway.get("/v1/log/proof/consistency",
                          params={"from": str(first), "to": str(second)})
    if r.status_code != 200:
        raise LogRefused("consistency_unavailable", f"HTTP {r.status_code}")
    try:
        return decode_hashes(r.json()["proof"])
    except (ValueError, KeyError, TypeError):
        raise LogRefused("proof_malformed") from None


async def cosign(witness: WitnessConfig, checkpoint: Verified, *, gateway: httpx.AsyncClient,
                 http: httpx.AsyncClient, logs: KeptLogs, now: int,
                 max_age: int = WITNESS_MAX_AGE) -> int:
    """The time `witness` cosigned `checkpoint` (it must be within `max_age` of `now`);
    `GatewayNotAttested` when it will not or its cosignature does not hold."""
    origin, size = checkpoint.checkpoint.origin, checkpoint.checkpoint.size
    old = logs.witnessed(witness.key.vkey(), origin)
    try:
        for _ in range(2):  # once more after a 409 tells the witness's size
            if old > size:
                raise LogRefused("witness_ahead", f"the witness cosigned {old} entries, the "
                                 f"gateway shows {size}: a stale or forked view")
            proof = await consistency_proof(gateway, old, size) if 0 < old < size else []
            body = add_checkpoint_body(old, proof, checkpoint.note)
            try:
                r = await http.post(witness.url + WITNESS_PATH, content=body)
            except httpx.TransportError:
                raise LogRefused("witness_unreachable", witness.url) from None
            if r.status_code == 409 and r.headers.get("content-type", "").startswith(
                    SIZE_MEDIA_TYPE) and r.text.strip().isdigit():
                if int(r.text.strip()) == old:  # its size, but not its root: a fork
                    raise LogRefused("log_forked", f"the witness {witness.url} cosigned "
                                     f"another tree of {old} entries")
                old = int(r.text.strip())
                continue
            if r.status_code != 200:
                raise LogRefused("witness_refused", f"{witness.url}: HTTP {r.status_code} "
                                 f"{r.text.strip()[:100]}")
            try:
                time = cosignature(checkpoint.note, r.text, witness.key, now=now,
                                   max_age=max_age)
            except NoteError as exc:
                raise LogRefused(exc.reason, witness.url) from None
            logs.record_witnessed(witness.key.vkey(), origin, size)
            return time
        raise LogRefused("witness_refused", f"{witness.url}: sizes keep changing")
    except LogRefused as exc:
        raise GatewayNotAttested(f"transparency log: {exc}") from None


async def cosign_all(witnesses: Sequence[WitnessConfig], checkpoint: Verified, *,
                     gateway: httpx.AsyncClient, logs: KeptLogs, now: int, max_age: int
                     ) -> int:
    """Every witness's cosignature on `checkpoint`; the oldest's time."""
    async with httpx.AsyncClient(timeout=30) as http:
        times = [await cosign(w, checkpoint, gateway=gateway, http=http, logs=logs, now=now,
                              max_age=max_age) for w in witnesses]
    return min(times)
