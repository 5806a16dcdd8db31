"""The replay record store shared by a fleet's replicas (and a gateway's `--workers`): a
table in the platform's database (PostgreSQL for a fleet), so a request answered by one
replica is refused by all (`enclave.replay.ReplayCache`). A record is a 32-byte key
(already a digest of what makes the request unique), its expiry, and a digest of the
client that sent it (never its address); an insert that collides with a live record is a
replay, with an expired one a reuse of the slot. Expired records are swept every
`SWEEP_EVERY` inserts.

Anyone can seal a valid request, so, as in memory, records are counted per client: a
count per client is kept beside them (`replay_clients`), and a client past its share
(`max_per_client`) sheds its own oldest records, a batch at a time (`SHED_BATCH` of its
share), so that its count is recounted once per batch, not once per request. A flood
from one address fills its own share, never the database.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from enclave.replay import DEFAULT_MAX_ENTRIES, SHARE, ReplayCacheUnavailable
from gateway.database import create_schema, open_database

SWEEP_EVERY = 1000
SHED_BATCH = 0.01  # of a client's share, shed at once when it is past it

_metadata = sa.MetaData()
replay_records = sa.Table(
    "replay_records", _metadata,
    sa.Column("key", sa.LargeBinary(32), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
    sa.Column("client", sa.LargeBinary(16), nullable=True),  # NULL: from before shares
    sa.Index("replay_records_by_client", "client", "expires_at"),
)
replay_clients = sa.Table(
    "replay_clients", _metadata,
    sa.Column("client", sa.LargeBinary(16), primary_key=True),
    sa.Column("records", sa.BigInteger, nullable=False),
)


def client_digest(client: str) -> bytes:
    return hashlib.sha256(b"cloister-replay-client\x00" + client.encode()).digest()[:16]


class SqlReplayCache:
    blocking = True  # a database round trip per request: called off the event loop

    def __init__(self, url: str, *, scratch: bool = False,
                 max_per_client: int = int(DEFAULT_MAX_ENTRIES * SHARE)) -> None:
        """`scratch`: see `gateway.database.open_database`."""
        self._engine = open_database(url, scratch=scratch)
        create_schema(self._engine, _metadata)
        self._inserts = 0
        self._quota = max_per_client
        self._batch = max(1, int(max_per_client * SHED_BATCH))

    def add(self, key: bytes, expires_at: float, now: float, client: str = "") -> bool:
        """As `ReplayCache.add`. Raises `ReplayCacheUnavailable` when the database
        cannot be reached or is full."""
        try:
            return self._add(key, expires_at, now, client_digest(client))
        except sa.exc.OperationalError:  # unreachable, full: the driver's text stays here
            raise ReplayCacheUnavailable() from None

    def _add(self, key: bytes, expires_at: float, now: float, client: bytes) -> bool:
        self._inserts += 1
        with self._engine.begin() as db:
            if self._inserts % SWEEP_EVERY == 0:
                db.execute(replay_records.delete().where(replay_records.c.expires_at <= now))
            # Take an expired slot, else insert; a live record of this key is a replay.
            taken = db.execute(replay_records.update().where(replay_records.c.key == key)
                               .where(replay_records.c.expires_at <= now)
                               .values(expires_at=expires_at, client=client)).rowcount
            if not taken:
                try:
                    with db.begin_nested():
                        db.execute(replay_records.insert().values(
                            key=key, expires_at=expires_at, client=client))
                except sa.exc.IntegrityError:
                    return False
            if self._counted(db, client) > self._quota:
                self._shed(db, client, now)
        return True

    def _counted(self, db: sa.Connection, client: bytes) -> int:
        """The client's count, one more (an upper bound: expiries are not subtracted)."""
        bumped = db.execute(replay_clients.update().where(replay_clients.c.client == client)
                            .values(records=replay_clients.c.records + 1)
                            .returning(replay_clients.c.records)).scalar()
        if bumped is not None:
            return int(bumped)
        try:
            with db.begin_nested():
                db.execute(replay_clients.insert().values(client=client, records=1))
        except sa.exc.IntegrityError:  # another replica made the row meanwhile
            return self._counted(db, client)
        return 1

    def _shed(self, db: sa.Connection, client: bytes, now: float) -> None:
        """Past its share: the client's expired records and its oldest live ones (a batch
        below the share), then its exact count."""
        mine = replay_records.c.client == client
        db.execute(replay_records.delete().where(mine).where(
            replay_records.c.expires_at <= now))
        live = db.execute(sa.select(sa.func.count()).select_from(replay_records)
                          .where(mine)).scalar_one()
        excess = live - (self._quota - self._batch)
        if excess > 0:
            oldest = (sa.select(replay_records.c.key).where(mine)
                      .order_by(replay_records.c.expires_at).limit(excess)
                      .scalar_subquery())
            db.execute(replay_records.delete().where(replay_records.c.key.in_(oldest)))
            live -= excess
        db.execute(replay_clients.update().where(replay_clients.c.client == client)
                   .values(records=live))

    def close(self) -> None:
        self._engine.dispose()
