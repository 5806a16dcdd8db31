"""A client's view of a log: the latest checkpoint it verified, and the checks that make
a log's history one history. Each new checkpoint must be signed by the attested log key
and extend the last one (an RFC 9162 consistency proof); two checkpoints of one size
with different roots, or one a proof cannot join to the last, is a forked log, refused.
Inclusion proofs are checked against a verified checkpoint. Sans-IO; the client keeps
`state()` where it likes (`proxy.logview`)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from enclave.tlog.merkle import ProofError, verify_consistency, verify_inclusion
from enclave.tlog.note import Checkpoint, NoteError, NoteKey, open_checkpoint


class LogRefused(Exception):
    """A checkpoint or proof the client refuses; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_hashes(items: Any) -> list[bytes]:
    """A proof's base64 hashes; `LogRefused` when they are not 32-byte hashes."""
    try:
        hashes = [base64.b64decode(h, validate=True) for h in items]
    except (TypeError, ValueError, binascii.Error):
        raise LogRefused("proof_malformed") from None
    if any(len(h) != 32 for h in hashes) or len(hashes) > 64:
        raise LogRefused("proof_malformed")
    return hashes


@dataclass(frozen=True)
class Verified:
    checkpoint: Checkpoint
    note: bytes


def open_signed(note: bytes, key: bytes) -> Verified:
    """A checkpoint signed by the log key `key` (raw Ed25519, as the report binds it)
    under its own origin's name; `LogRefused` otherwise."""
    try:
        origin = Checkpoint.parse(note[:note.find(b"\n\n") + 1]).origin
        checkpoint, _ = open_checkpoint(note, NoteKey(origin, key))
    except NoteError as exc:
        raise LogRefused("checkpoint_invalid", exc.reason) from None
    return Verified(checkpoint, note)


def check_inclusion(checkpoint: Checkpoint, leaf: bytes, index: int,
                    proof: Sequence[bytes]) -> None:
    try:
        verify_inclusion(index, checkpoint.size, leaf, proof, checkpoint.root)
    except ProofError as exc:
        raise LogRefused("inclusion_invalid", str(exc)) from None


class LogView:
    def __init__(self, known: dict[str, Checkpoint] | None = None) -> None:
        self.known: dict[str, Checkpoint] = dict(known or {})  # by origin

    def since(self, origin: str) -> int:
        """The size a consistency proof must start from for this log."""
        known = self.known.get(origin)
        return 0 if known is None else known.size

    def accept(self, verified: Verified, consistency: Sequence[bytes]) -> Checkpoint:
        """Take a verified checkpoint as the log's latest, if it extends the last one
        (`consistency`: the proof from `since(origin)` to it); `LogRefused` otherwise."""
        new = verified.checkpoint
        old = self.known.get(new.origin)
        if old is not None:
            if new.size < old.size:
                raise LogRefused("log_rolled_back", f"a checkpoint of {new.size} entries "
                                 f"after one of {old.size}")
            try:
                verify_consistency(old.size, new.size, old.root, new.root, consistency)
            except ProofError as exc:
                raise LogRefused("log_forked", str(exc)) from None
        self.known[new.origin] = new
        return new

    def state(self) -> dict[str, dict[str, Any]]:
        return {o: {"size": c.size, "root": base64.b64encode(c.root).decode()}
                for o, c in self.known.items()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LogView:
        known = {}
        for origin, item in state.items():
            try:
                known[origin] = Checkpoint(origin, int(item["size"]),
                                           base64.b64decode(item["root"]))
            except (KeyError, TypeError, ValueError, binascii.Error):
                continue
        return cls(known)
