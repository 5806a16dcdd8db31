"""The gateway's transparency log (`enclave.tlog`): receipts (their hashes) and the
release statements it serves, appended to one RFC 9162 tree per database, with a
checkpoint signed by the attested log key (`log-ed25519` in the report) at least every
`CHECKPOINT_SECONDS`.

    entry   = a line naming a receipt or a release statement by digest
              (`enclave.tlog.entries`)

Stored in the configured database (`log_entries`, `log_checkpoints`; SQLite in the state
folder by default, the fleet's PostgreSQL for replicas). Every process queues what it
appends (`log_queue`); the one holding the sequencer lease (`log_sequencer`, renewed
each turn, taken over when it lapses) numbers the queue into entries and signs the
checkpoint; every process follows the entries into its own tree, from which it serves
proofs and tiles. Appending is a list append on the request path; the database is
touched once a turn (`TURN_SECONDS`), off the event loop. Each checkpoint carries the time
it was signed (an extension line, `time <Unix seconds>`), so a client can tell a current
one from a replayed old one by its own clock.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import sqlalchemy as sa
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.tlog import tiles
from enclave.tlog.merkle import MerkleTree, ProofError, leaf_hash
from enclave.tlog.note import Checkpoint, Note, NoteSigner, time_extension
from gateway.database import create_schema, open_database

BOUND_KEY = "log-ed25519"
TURN_SECONDS = 1.0
CHECKPOINT_SECONDS = 30.0  # the bound is 60 s; half of it leaves room for a slow turn
LEASE_SECONDS = 10.0
log = structlog.get_logger("cloister.tlog")

_metadata = sa.MetaData()
log_meta = sa.Table(
    "log_meta", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("origin", sa.String(200), nullable=False),
)
log_entries = sa.Table(
    "log_entries", _metadata,
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("entry", sa.LargeBinary, nullable=False),
    sa.Column("leaf", sa.LargeBinary(32), nullable=False, index=True),
)
log_queue = sa.Table(
    "log_queue", _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("entry", sa.LargeBinary, nullable=False),
)
log_checkpoints = sa.Table(
    "log_checkpoints", _metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("note", sa.LargeBinary, nullable=False),
    sa.Column("signed_at", sa.Float, nullable=False),
)
log_sequencer = sa.Table(
    "log_sequencer", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("until", sa.Float, nullable=False),
)


class LogStore:
    """The log's tables (blocking: called off the event loop)."""

    def __init__(self, url: str) -> None:
        self.engine = open_database(url)
        create_schema(self.engine, _metadata)
        with self.engine.begin() as db:
            origin = db.execute(sa.select(log_meta.c.origin)).scalar()
            if origin is None:  # a new log: its name, once (C2SP: a schema-less URL)
                origin = f"cloister.log/{os.urandom(8).hex()}"
                try:
                    with db.begin_nested():
                        db.execute(log_meta.insert().values(id=1, origin=origin))
                except sa.exc.IntegrityError:  # another process named it meanwhile
                    origin = db.execute(sa.select(log_meta.c.origin)).scalar_one()
        self.origin: str = origin

    def queue(self, entries: list[bytes]) -> None:
        with self.engine.begin() as db:
            db.execute(log_queue.insert(), [{"entry": e} for e in entries])

    def take_lease(self, holder: str, now: float) -> bool:
        with self.engine.begin() as db:
            taken = db.execute(log_sequencer.update().where(log_sequencer.c.id == 1).where(
                (log_sequencer.c.holder == holder) | (log_sequencer.c.until < now))
                .values(holder=holder, until=now + LEASE_SECONDS)).rowcount
            if taken:
                return True
            try:
                with db.begin_nested():
                    db.execute(log_sequencer.insert().values(id=1, holder=holder,
                                                             until=now + LEASE_SECONDS))
            except sa.exc.IntegrityError:
                return False
            return True

    def integrate(self, size: int) -> list[bytes]:
        """Number the queue from `size` on (the sequencer only); the new entries."""
        with self.engine.begin() as db:
            if db.engine.dialect.name == "postgresql":
                db.execute(sa.select(log_sequencer.c.id).with_for_update())
            stored = db.execute(sa.select(sa.func.count()).select_from(log_entries)).scalar_one()
            if stored != size:  # another sequencer wrote meanwhile: follow first
                return []
            rows = db.execute(sa.select(log_queue.c.id, log_queue.c.entry)
                              .order_by(log_queue.c.id).limit(50_000)).all()
            if not rows:
                return []
            db.execute(log_entries.insert(), [
                {"idx": size + i, "entry": row.entry, "leaf": leaf_hash(row.entry)}
                for i, row in enumerate(rows)])
            db.execute(log_queue.delete().where(log_queue.c.id <= rows[-1].id))
            return [row.entry for row in rows]

    def entries(self, start: int, end: int | None = None) -> list[bytes]:
        query = sa.select(log_entries.c.entry).where(log_entries.c.idx >= start)
        if end is not None:
            query = query.where(log_entries.c.idx < end)
        with self.engine.connect() as db:
            return [row.entry for row in db.execute(query.order_by(log_entries.c.idx))]

    def index_of(self, leaf: bytes) -> int | None:
        with self.engine.connect() as db:
            return db.execute(sa.select(sa.func.min(log_entries.c.idx))
                              .where(log_entries.c.leaf == leaf)).scalar()

    def save_checkpoint(self, size: int, note: bytes, now: float) -> None:
        with self.engine.begin() as db:
            updated = db.execute(log_checkpoints.update().where(log_checkpoints.c.size == size)
                                 .values(note=note, signed_at=now)).rowcount
            if not updated:
                db.execute(log_checkpoints.insert().values(size=size, note=note,
                                                           signed_at=now))

    def latest_checkpoint(self) -> tuple[bytes, float] | None:
        with self.engine.connect() as db:
            row = db.execute(sa.select(log_checkpoints.c.note, log_checkpoints.c.signed_at)
                             .order_by(log_checkpoints.c.size.desc()).limit(1)).first()
        return None if row is None else (row.note, row.signed_at)

    def close(self) -> None:
        self.engine.dispose()


class MemoryLogStore:
    """The log's store for one process that keeps nothing across restarts (`create_app`
    without a database: tests, embedding); `LogStore`'s behaviour, in memory."""

    def __init__(self) -> None:
        self.origin = f"cloister.log/{os.urandom(8).hex()}"
        self._queue: list[bytes] = []
        self._entries: list[bytes] = []
        self._index: dict[bytes, int] = {}
        self._checkpoint: tuple[bytes, float] | None = None
        self._lock = threading.Lock()

    def queue(self, entries: list[bytes]) -> None:
        with self._lock:
            self._queue += entries

    def take_lease(self, holder: str, now: float) -> bool:
        return True

    def integrate(self, size: int) -> list[bytes]:
        with self._lock:
            taken, self._queue = self._queue, []
            for entry in taken:
                self._index.setdefault(leaf_hash(entry), len(self._entries))
                self._entries.append(entry)
            return taken

    def entries(self, start: int, end: int | None = None) -> list[bytes]:
        with self._lock:
            return self._entries[start:end]

    def index_of(self, leaf: bytes) -> int | None:
        with self._lock:
            return self._index.get(leaf)

    def save_checkpoint(self, size: int, note: bytes, now: float) -> None:
        with self._lock:
            self._checkpoint = (note, now)

    def latest_checkpoint(self) -> tuple[bytes, float] | None:
        with self._lock:
            return self._checkpoint

    def close(self) -> None:
        return None


class TransparencyLog:
    """One process's view of the log: it appends, follows, sequences when it holds the
    lease, and answers checkpoints, proofs and tiles from its own tree."""

    def __init__(self, store: LogStore | MemoryLogStore, signer_key: Ed25519PrivateKey, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.origin = store, store.origin
        self.signer = NoteSigner(store.origin, signer_key)
        self.tree = MerkleTree()
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._holder = os.urandom(8).hex()
        self._clock = clock
        self.checkpoint: bytes | None = None  # the latest signed checkpoint (a note)
        self.signed_at = 0.0
        self.turned = asyncio.Event()  # set after each turn (tests wait on it)

    @property
    def public_key(self) -> bytes:
        return self.signer.key.public_key

    def append(self, entry: bytes) -> None:
        """Queue `entry` (cheap: the request path calls it)."""
        with self._lock:
            self._pending.append(entry)

    def append_once(self, entries: Iterable[bytes]) -> None:
        """Queue what the log does not hold yet (release statements, at each start)."""
        for entry in entries:
            if self.store.index_of(leaf_hash(entry)) is None and entry not in self._pending:
                self.append(entry)

    @classmethod
    def in_memory(cls) -> TransparencyLog:
        return cls(MemoryLogStore(), Ed25519PrivateKey.generate())

    def turn(self) -> None:
        """One turn (blocking): queue what was appended, sequence if this process holds
        the lease, follow the stored entries, sign a checkpoint when it is due."""
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self.store.queue(pending)
        now = self._clock()
        size = self.tree.size
        for entry in self.store.entries(size):
            self.tree.append(entry)
        sequencer = self.store.take_lease(self._holder, now)
        if sequencer:
            for entry in self.store.integrate(self.tree.size):
                self.tree.append(entry)
        stored = self.store.latest_checkpoint()
        if stored is not None and Checkpoint.parse(Note.parse(stored[0]).text).size \
                <= self.tree.size:
            self.checkpoint, self.signed_at = stored
        if sequencer and (self.checkpoint is None or self.tree.size > self._size_signed()
                          or now - self.signed_at >= CHECKPOINT_SECONDS):
            self.sign(now)

    def _size_signed(self) -> int:
        assert self.checkpoint is not None
        return Checkpoint.parse(Note.parse(self.checkpoint).text).size

    def sign(self, now: float) -> None:
        checkpoint = Checkpoint(self.origin, self.tree.size, self.tree.root(),
                                (time_extension(now),))
        note = self.signer.sign(checkpoint.text())
        self.store.save_checkpoint(checkpoint.size, note, now)
        self.checkpoint, self.signed_at = note, now

    async def run(self) -> None:
        """Turn every `TURN_SECONDS` until cancelled; a failing turn is logged and
        retried (the database may be away for a while)."""
        while True:
            try:
                await asyncio.to_thread(self.turn)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("log_turn_failed", error_type=type(exc).__name__)
            self.turned.set()
            self.turned = asyncio.Event()
            await asyncio.sleep(TURN_SECONDS)

    # --- what it serves -------------------------------------------------------------

    def checkpoint_size(self) -> int:
        return 0 if self.checkpoint is None else self._size_signed()

    def inclusion(self, leaf: bytes, size: int) -> tuple[int, list[bytes]]:
        """The index of `leaf` and its proof in the tree of `size`; `ProofError`."""
        index = self.store.index_of(leaf)
        if index is None or index >= size:
            raise ProofError("no such entry in a tree of that size")
        return index, self.tree.inclusion_proof(index, size)

    def consistency(self, first: int, second: int) -> list[bytes]:
        return self.tree.consistency_proof(first, second)

    def tile(self, path: str, size: int) -> bytes:
        """A tile of the tree of `size` (`tiles.TileError` if it has none such)."""
        level, index, width = tiles.parse_tile_path(path)
        tiles.check_tile(size, level, index, width)
        if level == tiles.ENTRIES:
            start = index * tiles.WIDTH
            return tiles.entry_bundle(self.store.entries(start, start + width))
        return tiles.tile_data(self.tree, size, level, index, width)

    def export(self, folder: Path) -> int:
        """Write the latest checkpoint and its tiles under `folder`, for any static HTTP
        server; the size exported."""
        if self.checkpoint is None:
            raise ProofError("the log has no checkpoint yet")
        return write_tiles(folder, self.checkpoint, self.tree, self.store.entries)


def write_tiles(folder: Path, checkpoint: bytes, tree: MerkleTree,
                entries: Callable[[int, int], list[bytes]]) -> int:
    """`checkpoint` (a signed note) and every tile of its tree under `folder`; its size."""
    size = Checkpoint.parse(Note.parse(checkpoint).text).size
    for level, index, width in tiles.tiles_of(size):
        path = folder / tiles.tile_path(level, index, width)
        path.parent.mkdir(parents=True, exist_ok=True)
        if level == tiles.ENTRIES:
            start = index * tiles.WIDTH
            path.write_bytes(tiles.entry_bundle(entries(start, start + width)))
        else:
            path.write_bytes(tiles.tile_data(tree, size, level, index, width))
    (folder / "checkpoint").write_bytes(checkpoint)
    return size


def export_stored(store: LogStore, folder: Path) -> int:
    """`cloister log export`: the stored log's latest checkpoint and tiles, read from the
    database alone (no key: nothing is signed here)."""
    stored = store.latest_checkpoint()
    if stored is None:
        raise ProofError("the log has no checkpoint yet")
    entries = store.entries(0)
    return write_tiles(folder, stored[0], MerkleTree([leaf_hash(e) for e in entries]),
                       lambda start, end: entries[start:end])
