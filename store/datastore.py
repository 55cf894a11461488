"""The one module that reaches past eventsourcing's recorder interface.

``ApplicationRecorder`` offers no SQL, but Chorus needs a few queries and tables beside the
events that eventsourcing does not have: positions with an aggregate's events, raw rows for
the tamper check, the seals, checkpoints, snapshots and trace contexts. Both concrete
recorders (SQLite and PostgreSQL) carry a ``datastore`` (a connection pool with
``transaction(commit=...)``) and an ``events_table_name``: attributes of those classes, not
of the interface, which another eventsourcing release may change. So only this module
touches them, and ``tests/integration/test_datastore.py`` checks each function here on
both backends: an upgrade that moves them fails there, in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    beside.create_table()
    return beside


def close_recorder(recorder: ApplicationRecorder) -> None:
    """Close the recorder's connections (eventsourcing's recorders have no ``close``)."""
    _datastore(recorder).close()
