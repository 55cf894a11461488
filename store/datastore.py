"""The one module that reaches past eventsourcing's recorder interface.

``ApplicationRecorder`` offers no SQL, but Chorus needs a few queries and tables beside the
events that eventsourcing does not have: positions with an aggregate's events, raw rows for
the tamper check, the seals, checkpoints, snapshots and trace contexts. Both concrete
recorders (SQLite and PostgreSQL) carry a ``datastore`` (a connection pool with
``transaction(commit=...)``) and an ``events_table_name``: attributes of those classes, not
of the interface, which another eventsourcing release may change. So only this module
touches them, and ``tests/integration/test_datastore.py`` checks each function here on
both backends: an upgrade that moves them fails there, in one place. (``pgrecorder.py``
subclasses the PostgreSQL recorder; ``tests/integration/test_pgrecorder.py`` runs the
library's own recorder test cases against it.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import AggregateRecorder, ApplicationRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteDatastore


def _datastore(recorder: ApplicationRecorder) -> Any:
    return recorder.datastore  # type: ignore[attr-defined]


class Dialect:
    """What differs between the two backends for our own SQL.

    ``table`` is the events table (qualified on PostgreSQL), ``position`` its global
    position column, ``mark`` the parameter placeholder. Identifiers come from the
    recorder's own settings, never from a request.
    """

    def __init__(self, recorder: ApplicationRecorder) -> None:
        table = recorder.events_table_name  # type: ignore[attr-defined]
        datastore = _datastore(recorder)
        self.sqlite = isinstance(datastore, SQLiteDatastore)
        self.schema: str | None = None if self.sqlite else datastore.schema
        if self.sqlite:
            self.table, self.position, self.mark = table, "rowid", "?"
        else:
            self.table = f'"{self.schema}"."{table}"'
            self.position, self.mark = "notification_id", "%s"

    def beside(self, table: str) -> str:
        """The name of our own ``table`` in the events' database (and schema)."""
        return table if self.sqlite else f'"{self.schema}".{table}'

    def key(self, aggregate_id: UUID) -> object:
        """An aggregate id as the recorder stores it (SQLite: hex text; PostgreSQL: uuid)."""
        return aggregate_id.hex if self.sqlite else aggregate_id

    def columns(self) -> str:
        return f"{self.position} AS position, originator_id, originator_version, topic, state"


@contextmanager
def transaction(recorder: ApplicationRecorder, *, commit: bool) -> Iterator[Any]:
    """A cursor in one transaction on the recorder's own connection pool (rows as
    mappings on both backends); committed on leaving if ``commit``."""
    with _datastore(recorder).transaction(commit=commit) as cursor:
        yield cursor


@contextmanager
def reading(recorder: ApplicationRecorder) -> Iterator[Any]:
    """A cursor for reads that need no transaction of their own.

    On PostgreSQL the pool's connections are in autocommit mode, so each statement runs
    alone, without a BEGIN before it and a ROLLBACK after it: two round trips fewer, and
    the engine reads once per batch (its dedup lookup). Each statement sees what was
    committed before it started, as it would in a READ COMMITTED transaction. On SQLite,
    a read transaction as ``transaction(commit=False)``.
    """
    datastore = _datastore(recorder)
    if isinstance(datastore, SQLiteDatastore):
        with datastore.transaction(commit=False) as cursor:
            yield cursor
        return
    with datastore.get_connection() as conn, conn.cursor() as cursor:
        yield cursor


def insert_rows(
    cursor: Any,
    d: Dialect,
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[object]],
    suffix: str = "",
) -> None:
    """Insert ``rows`` into ``table`` (``columns`` as ``(name, PostgreSQL type)``), then
    ``suffix`` (e.g. ``ON CONFLICT ... DO NOTHING``).

    On PostgreSQL in one statement, from one array per column: psycopg's ``executemany``
    sends one statement per row, and its per-row cost (in the sealer, two rows per
    command) showed in the engine's profile. On SQLite, ``executemany`` (in-process, C).
    """
    if not rows:
        return
    names = ", ".join(name for name, _ in columns)
    if d.sqlite:
        marks = ", ".join("?" for _ in columns)
        cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks}) {suffix}", rows)
        return
    arrays = ", ".join(f"%s::{kind}[]" for _, kind in columns)
    cursor.execute(
        f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {suffix}",
        [list(column) for column in zip(*rows, strict=True)],
    )


def _ddl_key(schema: str) -> int:
    """The advisory lock's key for table creation in ``schema`` (a signed 64-bit int)."""
    digest = hashlib.blake2b(f"chorus.ddl:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def schema_lock(recorder: ApplicationRecorder) -> Iterator[None]:
    """Table creation in the store's schema, one process (and thread) at a time.

    On PostgreSQL, ``CREATE TABLE IF NOT EXISTS``, ``CREATE TYPE`` (eventsourcing catches
    only ``DuplicateObject``) and ``CREATE OR REPLACE FUNCTION`` are not safe to run at
    once: the loser of a race fails with a unique violation on ``pg_type`` or "tuple
    concurrently updated", so an engine, a projector and a gateway starting together on a
    fresh schema would not all come up. A session-level advisory lock, keyed by the schema,
    serialises them. It is held on a connection of its own, outside the recorder's pool:
    eventsourcing's ``create_table`` runs several transactions on pool connections, and
    threads waiting for the lock must not hold the pool connections the holder needs.
    SQLite serialises DDL itself (one writer at a time): nothing to do there.
    """
    datastore = _datastore(recorder)
    if isinstance(datastore, SQLiteDatastore):
        yield
        return
    import psycopg

    options = {k: v for k, v in datastore.pool.kwargs.items() if k != "row_factory"}
    key = _ddl_key(datastore.schema)
    # Bounded like the pool's own connections: an unreachable server fails, never hangs.
    timeout = max(1, round(datastore.pool.timeout))
    with psycopg.connect(**options, autocommit=True, connect_timeout=timeout) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [key])
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [key])


def create_tables(recorder: ApplicationRecorder, *statements: str) -> None:
    """Run ``CREATE ... IF NOT EXISTS`` statements beside the events, in one transaction,
    under the schema's lock (``schema_lock``)."""
    with schema_lock(recorder), transaction(recorder, commit=True) as cursor:
        for statement in statements:
            cursor.execute(statement)


def create_events_table(recorder: ApplicationRecorder) -> None:
    """The recorder's own tables (and on PostgreSQL its type, index and function), created
    under the schema's lock: ``create_table`` is a method of both concrete recorders. (A
    fresh SQLite file is switched to WAL before, by ``open_recorder``: see
    ``chorus.sqlite_wal``.)"""
    with schema_lock(recorder):
        recorder.create_table()  # type: ignore[attr-defined]


def aggregate_recorder(recorder: ApplicationRecorder, table: str) -> AggregateRecorder:
    """An eventsourcing aggregate recorder on another ``table`` of the same database and
    connection pool (created if missing): where snapshots are kept."""
    datastore = _datastore(recorder)
    beside: AggregateRecorder
    if isinstance(datastore, SQLiteDatastore):
        beside = SQLiteAggregateRecorder(datastore, events_table_name=table)
    else:
        from eventsourcing.postgres import PostgresAggregateRecorder

        beside = PostgresAggregateRecorder(datastore, events_table_name=table)
    with schema_lock(recorder):
        beside.create_table()
    return beside


def close_recorder(recorder: ApplicationRecorder) -> None:
    """Close the recorder's connections (eventsourcing's recorders have no ``close``)."""
    _datastore(recorder).close()
