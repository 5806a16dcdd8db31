"""The replay record store shared by a fleet's replicas: a table in the platform's
database (PostgreSQL for a fleet), so a request answered by one replica is refused by all
(`enclave.replay.ReplayCache`). A record is a 32-byte key (already a MAC-free digest of
what makes the request unique) and its expiry; an insert that collides with a live
record is a replay, with an expired one a reuse of the slot. Expired records are swept
every `SWEEP_EVERY` inserts.
"""

from __future__ import annotations

import sqlalchemy as sa

from enclave.replay import ReplayCacheUnavailable
from gateway.database import create_schema, open_database

SWEEP_EVERY = 1000

_metadata = sa.MetaData()
replay_records = sa.Table(
    "replay_records", _metadata,
    sa.Column("key", sa.LargeBinary(32), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


class SqlReplayCache:
    blocking = True  # a database round trip per request: called off the event loop

    def __init__(self, url: str, *, scratch: bool = False) -> None:
        """`scratch`: see `gateway.database.open_database`."""
        self._engine = open_database(url, scratch=scratch)
        create_schema(self._engine, _metadata)
        self._inserts = 0

    def add(self, key: bytes, expires_at: float, now: float, client: str = "") -> bool:
        """As `ReplayCache.add`; the shared store keeps no per-client share (its rows are
        the fleet's, bounded by the database's size, and a full database is
        `ReplayCacheUnavailable`)."""
        try:
            return self._add(key, expires_at, now)
        except sa.exc.OperationalError:  # unreachable, full: the driver's text stays here
            raise ReplayCacheUnavailable() from None

    def _add(self, key: bytes, expires_at: float, now: float) -> bool:
        self._inserts += 1
        with self._engine.begin() as db:
            if self._inserts % SWEEP_EVERY == 0:
                db.execute(replay_records.delete().where(replay_records.c.expires_at <= now))
            # Take an expired slot, else insert; a live record of this key is a replay.
            taken = db.execute(replay_records.update().where(replay_records.c.key == key)
                               .where(replay_records.c.expires_at <= now)
                               .values(expires_at=expires_at)).rowcount
            if taken:
                return True
            try:
                with db.begin_nested():
                    db.execute(replay_records.insert().values(key=key, expires_at=expires_at))
            except sa.exc.IntegrityError:
                return False
        return True

    def close(self) -> None:
        self._engine.dispose()
