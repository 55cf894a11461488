"""eventsourcing's PostgreSQL application recorder, with a cheaper insert.

The library inserts a batch as one array of its composite type ``stored_event_uuid``:
psycopg adapts a composite in Python, field by field, even with its C implementation,
and that was the largest single cost of the engine's writes on PostgreSQL (bench.pgwrite,
profiled with py-spy). Here the batch goes as four plain arrays (ids, versions, topics,
states), which psycopg adapts in C, the states in binary, through one prepared
statement. Everything else (the table lock that keeps positions in commit order, the
NOTIFY, the pipeline, the errors) is the library's own; so are the table and its type,
which other processes with the stock recorder still use.

``open_recorder`` selects this class through eventsourcing's
``APPLICATION_RECORDER_TOPIC`` setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier


class ArrayInsertRecorder(PostgresApplicationRecorder):
    """``PostgresApplicationRecorder`` whose batches are inserted from plain arrays."""

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::{id_type}[], %s::bigint[], %s::text[], %b::bytea[]) "
            "RETURNING notification_id"
        ).format(
            schema=Identifier(datastore.schema),
            table=Identifier(events_table_name),
            id_type=Identifier(datastore.originator_id_type),
        )

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **_: Any
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self.insert_events_statement,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
            prepare=True,
        )
