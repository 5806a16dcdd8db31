"""C2SP tlog-witness (c2sp.org/tlog-witness): a witness cosigns a log's checkpoint once
it has checked it is signed by the log's key and consistent with the last one it
cosigned, so that a client can trust that everyone sees the same log, as of the
cosignature's time. Sans-IO, both sides:

    request  = "old " size "\\n" *(base64(hash) "\\n") "\\n" checkpoint note
    200      = cosignature lines (cosignature/v1)     409 = latest size "\\n"
               (text/x.tlog.size)                     400 / 403 / 404 / 422 = refused

`Witness` holds the latest cosigned (size, root) per origin; the caller persists
`state` after every 200, under one lock with the check (`cloister witness`).
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from enclave.tlog.merkle import ProofError, verify_consistency
from enclave.tlog.note import (
    COSIGNATURE_V1,
    Checkpoint,
    Note,
    NoteError,
    NoteKey,
    NoteSigner,
    cosignature_time,
)

PATH = "/add-checkpoint"
SIZE_MEDIA_TYPE = "text/x.tlog.size"
MAX_PROOF_LINES = 63


class WitnessError(Exception):
    """What a witness answered other than a cosignature (status, and for 409 its size)."""

    def __init__(self, status: int, reason: str, size: int | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.size = status, reason, size


def add_checkpoint_body(old: int, proof: Sequence[bytes], note: bytes) -> bytes:
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof), ""]
    return ("\n".join(lines) + "\n").encode() + note


def parse_add_checkpoint(body: bytes) -> tuple[int, list[bytes], bytes]:
    head, sep, note = body.partition(b"\n\n")
    lines = head.decode("ascii", "replace").split("\n")
    if not sep or not lines[0].startswith("old "):
        raise WitnessError(400, "malformed")
    size = lines[0][4:]
    if not size.isdigit() or (size != "0" and size.startswith("0")) or len(size) > 19:
        raise WitnessError(400, "malformed")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessError(400, "malformed")
    try:
        proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    except (ValueError, binascii.Error):
        raise WitnessError(400, "malformed") from None
    if any(len(h) != 32 for h in proof):
        raise WitnessError(400, "malformed")
    return int(size), proof, note


@dataclass
class Recorded:
    size: int
    root: bytes


class Witness:
    def __init__(self, signer: NoteSigner, logs: dict[str, NoteKey],
                 state: dict[str, Recorded] | None = None,
                 persist: Callable[[dict[str, Recorded]], None] | None = None) -> None:
        """`persist`: writes the state after each cosigned checkpoint, before the
        cosignature leaves (called under the lock, so check and record are atomic)."""
        if signer.key.kind != COSIGNATURE_V1:
            raise ValueError("a witness signs cosignature/v1")
        self.signer, self.logs, self._persist = signer, logs, persist
        self.state: dict[str, Recorded] = dict(state or {})
        self.lock = threading.Lock()

    def add_checkpoint(self, body: bytes, now: int) -> str:
        """The cosignature lines for a request `body`; `WitnessError` with the status
        the protocol gives otherwise. Checks and records under `lock`."""
        old, proof, raw = parse_add_checkpoint(body)
        try:
            note = Note.parse(raw)
            checkpoint = Checkpoint.parse(note.text)
        except NoteError:
            raise WitnessError(400, "malformed") from None
        key = self.logs.get(checkpoint.origin)
        if key is None:
            raise WitnessError(404, "unknown log")
        try:
            note.verify(key)
        except NoteError:
            raise WitnessError(403, "not signed by the log's key") from None
        if old > checkpoint.size:
            raise WitnessError(400, "old size past the checkpoint")
        with self.lock:
            recorded = self.state.get(checkpoint.origin)
            latest = recorded.size if recorded is not None else 0
            if old != latest:
                raise WitnessError(409, "old size is not the latest cosigned", size=latest)
            if recorded is not None and old == checkpoint.size:
                if checkpoint.root != recorded.root:
                    raise WitnessError(409, "another root for the cosigned size: a fork",
                                       size=latest)
            elif recorded is not None:
                try:
                    verify_consistency(old, checkpoint.size, recorded.root, checkpoint.root,
                                       proof)
                except ProofError:
                    raise WitnessError(422, "not consistent with the cosigned checkpoint"
                                       ) from None
            elif proof:
                raise WitnessError(422, "a proof from size 0 is empty")
            self.state[checkpoint.origin] = Recorded(checkpoint.size, checkpoint.root)
            if self._persist is not None:
                self._persist(self.state)
        return self.signer.signature_line(note.text, time=now)


def cosignature(note: bytes, lines: str, witness: NoteKey, *, now: int,
                max_age: int) -> int:
    """The time of `witness`'s cosignature among `lines` on the checkpoint `note`,
    checked: signed by that key and no older than `max_age` seconds (and not from the
    future); `NoteError` otherwise."""
    if witness.kind != COSIGNATURE_V1:
        raise NoteError("witness_key_not_cosignature")
    try:
        signed = Note.parse(note).with_signatures(lines)
    except NoteError:
        raise NoteError("cosignature_malformed") from None
    time = cosignature_time(signed.verify(witness))
    if time < now - max_age or time > now + 60:
        raise NoteError("cosignature_stale")
    return time
