"""Opening the SQL database that gateway processes share (the platform's state, the
replay records), with the locking discipline that makes sharing safe."""

from __future__ import annotations

import sqlalchemy as sa


def open_database(url: str, *, scratch: bool = False) -> sa.Engine:
    """SQLite: every transaction takes the write lock at its start (BEGIN IMMEDIATE), so
    processes sharing the file never interleave a read-modify-write. Others: READ
    COMMITTED with row locks (`FOR UPDATE`) for writes, REPEATABLE READ for reads.

    `scratch`: a SQLite file that need not survive a crash of the machine (the replay
    records of one run's workers, on tmpfs): a write-ahead log and no fsync."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, future=True)
    engine = sa.create_engine(url, future=True, connect_args={"isolation_level": None,
                                                              "timeout": 30})

    if scratch:
        @sa.event.listens_for(engine, "connect")
        def _connect(connection: object, _record: object) -> None:
            cursor = connection.cursor()  # type: ignore[attr-defined]
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_schema(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Create the tables that do not exist yet. Replicas of a fleet start together
    against one PostgreSQL database, and two concurrent CREATE TABLEs of one name fail
    (pg_type's unique index): the creation runs under a transaction-level advisory lock,
    so the second replica waits and then finds the tables. (SQLite's BEGIN IMMEDIATE
    already serialises it.)"""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": _SCHEMA_LOCK})
        metadata.create_all(connection)
        _add_missing_columns(connection, metadata)


def _add_missing_columns(connection: sa.Connection, metadata: sa.MetaData) -> None:
    """A nullable column added to a table after its database was made (a stored NULL
    means what the code took before the column existed), and its indexes: added in
    place."""
    inspector = sa.inspect(connection)
    preparer = connection.dialect.identifier_preparer
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"the database's {table.name} lacks {column.name}")
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(sa.text(
                f"ALTER TABLE {preparer.quote(table.name)} "
                f"ADD COLUMN {preparer.quote(column.name)} {kind}"))
        for index in table.indexes:  # create_all makes them only with a new table
            index.create(connection, checkfirst=True)


_SCHEMA_LOCK = int.from_bytes(b"cloistr", "big")  # one advisory lock id for the schema
