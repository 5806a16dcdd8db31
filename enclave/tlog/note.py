"""C2SP signed notes (c2sp.org/signed-note), checkpoints (c2sp.org/tlog-checkpoint) and
witness cosignatures (c2sp.org/tlog-cosignature), Ed25519 only.

    note       = text "\\n" 1*("— " name " " base64(key id || signature) "\\n")
    key id     = SHA-256(name || "\\n" || type || public key)[:4]   (type 0x01: Ed25519,
                                                                      0x04: cosignature/v1)
    checkpoint = origin "\\n" size "\\n" base64(root) "\\n" *(extension "\\n")
    cosigned   = "cosignature/v1\\ntime " t "\\n" || checkpoint; its signature carries
                 t as 8 bytes big-endian before the 64 of Ed25519

Written from the C2SP specifications (no maintained Python library reads them; Go's
golang.org/x/mod/sumdb/note is the reference, and the tests check against it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
_DASH = "\u2014 "
MAX_NOTE_SIZE = 1 << 16
MAX_SIGNATURES = 100


class NoteError(Exception):
    """A note, checkpoint or cosignature that does not hold; `reason` says which check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_id(name: str, public_key: bytes, kind: int = ED25519) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public_key).digest()[:4]


def _valid_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() or c == "+" for c in name)


@dataclass(frozen=True)
class NoteKey:
    """A signer's public identity: name, key and type (Ed25519 or cosignature/v1)."""

    name: str
    public_key: bytes
    kind: int = ED25519

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.public_key, self.kind)

    def vkey(self) -> str:
        """The verifier key text (`name+hex id+base64(type || key)`) Go's note reads."""
        return (f"{self.name}+{self.id.hex()}+"
                + base64.b64encode(bytes([self.kind]) + self.public_key).decode())

    @classmethod
    def parse_vkey(cls, text: str) -> NoteKey:
        try:
            name, hex_id, encoded = text.strip().split("+", 2)
            raw = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            raise NoteError("vkey_malformed") from None
        if not _valid_name(name) or len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
            raise NoteError("vkey_malformed")
        key = cls(name, raw[1:], raw[0])
        if key.id.hex() != hex_id.lower():
            raise NoteError("vkey_malformed")
        return key


class NoteSigner:
    def __init__(self, name: str, private_key: Ed25519PrivateKey, kind: int = ED25519
                 ) -> None:
        if not _valid_name(name):
            raise ValueError("a note signer's name has no spaces and no '+'")
        self.key = NoteKey(name, private_key.public_key().public_bytes_raw(), kind)
        self._private = private_key

    def signature_line(self, text: bytes, *, time: int | None = None) -> str:
        """The line that signs `text` (a checkpoint's text for cosignatures, which
        sign it under `time`)."""
        if self.key.kind == COSIGNATURE_V1:
            if time is None:
                raise ValueError("a cosignature is made at a time")
            stamp = time.to_bytes(8, "big")
            blob = stamp + self._private.sign(cosigned_message(text, time))
        else:
            blob = self._private.sign(text)
        return f"{_DASH}{self.key.name} {base64.b64encode(self.key.id + blob).decode()}\n"

    def sign(self, text: bytes) -> bytes:
        """A note of `text` with this signer's signature."""
        _check_text(text)
        return text + b"\n" + self.signature_line(text).encode()


def cosigned_message(checkpoint_text: bytes, time: int) -> bytes:
    return b"cosignature/v1\ntime " + str(time).encode() + b"\n" + checkpoint_text


def _check_text(text: bytes) -> None:
    if not text.endswith(b"\n") or b"\n\n" in text:
        raise ValueError("a note's text ends in one newline and holds no empty line")


@dataclass(frozen=True)
class Signature:
    name: str
    id: bytes
    blob: bytes  # the signature (for a cosignature: its 8-byte time, then Ed25519's)

    def line(self) -> str:
        return f"{_DASH}{self.name} {base64.b64encode(self.id + self.blob).decode()}\n"


@dataclass(frozen=True)
class Note:
    text: bytes
    signatures: tuple[Signature, ...]

    @classmethod
    def parse(cls, data: bytes) -> Note:
        if len(data) > MAX_NOTE_SIZE:
            raise NoteError("note_too_large")
        split = data.rfind(b"\n\n")
        if split < 0 or not data.endswith(b"\n"):
            raise NoteError("note_malformed")
        text, lines = data[:split + 1], data[split + 2:].decode("utf-8", "replace")
        signatures = []
        for line in lines.splitlines():
            if not line.startswith(_DASH):
                raise NoteError("note_malformed")
            try:
                name, encoded = line[len(_DASH):].split(" ")
                blob = base64.b64decode(encoded, validate=True)
            except (ValueError, binascii.Error):
                raise NoteError("note_malformed") from None
            if not _valid_name(name) or len(blob) < 5:
                raise NoteError("note_malformed")
            signatures.append(Signature(name, blob[:4], blob[4:]))
        if not signatures or len(signatures) > MAX_SIGNATURES:
            raise NoteError("note_malformed")
        return cls(text, tuple(signatures))

    def verify(self, key: NoteKey) -> Signature:
        """The signature by `key` on this note, checked; `NoteError` when there is none
        or it does not hold. A cosignature's time is in `cosignature_time`."""
        for sig in self.signatures:
            if sig.name != key.name or sig.id != key.id:
                continue
            message, blob = self.text, sig.blob
            if key.kind == COSIGNATURE_V1:
                if len(blob) != 8 + 64:
                    raise NoteError("cosignature_malformed")
                message = cosigned_message(self.text, int.from_bytes(blob[:8], "big"))
                blob = blob[8:]
            try:
                Ed25519PublicKey.from_public_bytes(key.public_key).verify(blob, message)
            except (InvalidSignature, ValueError):
                raise NoteError("note_signature_invalid") from None
            return sig
        raise NoteError("note_unsigned_by_key")

    def serialize(self) -> bytes:
        return self.text + b"\n" + "".join(s.line() for s in self.signatures).encode()

    def with_signatures(self, lines: str) -> Note:
        """This note with the signature lines `lines` (a witness's answer) added."""
        more = Note.parse(self.text + b"\n" + lines.encode()).signatures
        return Note(self.text, self.signatures + more)


def cosignature_time(signature: Signature) -> int:
    return int.from_bytes(signature.blob[:8], "big")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> bytes:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(),
                 *self.extensions]
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def parse(cls, text: bytes) -> Checkpoint:
        try:
            lines = text.decode().split("\n")
        except UnicodeDecodeError:
            raise NoteError("checkpoint_malformed") from None
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise NoteError("checkpoint_malformed")
        size_text = lines[1]
        try:
            root = base64.b64decode(lines[2], validate=True)
        except (ValueError, binascii.Error):
            raise NoteError("checkpoint_malformed") from None
        if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")) \
                or len(root) != 32:
            raise NoteError("checkpoint_malformed")
        return cls(lines[0], int(size_text), root, tuple(lines[3:-1]))


def time_extension(now: float) -> str:
    """Cloister's checkpoint extension: when the log signed it (Unix seconds)."""
    return f"time {int(now)}"


def signed_time(checkpoint: Checkpoint) -> int | None:
    """The time a checkpoint says it was signed, where it says so."""
    for line in checkpoint.extensions:
        name, _, value = line.partition(" ")
        if name == "time" and value.isdigit():
            return int(value)
    return None


def open_checkpoint(data: bytes, key: NoteKey, origin: str | None = None
                    ) -> tuple[Checkpoint, Note]:
    """A signed checkpoint, its signature by `key` checked (and its origin, if given)."""
    note = Note.parse(data)
    note.verify(key)
    checkpoint = Checkpoint.parse(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError("checkpoint_wrong_origin")
    return checkpoint, note
