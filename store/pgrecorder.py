"""eventsourcing's PostgreSQL application recorder, with a cheaper insert.

The library records a batch in an explicit transaction in pipeline mode: BEGIN, ``SET
LOCAL lock_timeout``, ``LOCK TABLE ... IN EXCLUSIVE MODE`` (so positions are handed out in
commit order: a reader following the log never passes a gap that fills in later),
``NOTIFY``, the INSERT of an array of its composite type ``stored_event_uuid``, a sync,
then COMMIT. Profiled with py-spy under bench.pgwrite, that cost the engine's writer
thread twice what SQLite's insert did: two round trips, psycopg's pipeline and
transaction machinery in Python, and the composite type, which psycopg adapts in Python
field by field even with its C implementation.

Here the same steps run inside one server-side function, ``chorus_insert_<table>``,
called in one statement on the pool's autocommit connection: one round trip, one
implicit transaction (the lock is held until it commits, as before), and the batch as
four plain arrays (ids, versions, topics, states), which psycopg adapts in C, the states
in binary, through a prepared statement. The table, its type and the library's own
function are unchanged, so a process with the stock recorder still reads and writes the
same table under the same lock.

``open_recorder`` selects this class through eventsourcing's
``APPLICATION_RECORDER_TOPIC`` setting; the function is created with the tables, under the
schema's lock (``chorus.store.datastore.schema_lock``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg.sql import SQL, Identifier


class ArrayInsertRecorder(PostgresApplicationRecorder):
    """``PostgresApplicationRecorder`` whose batches are inserted by one function call."""

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        function = f"chorus_insert_{events_table_name}"
        self.check_identifier_length(function)
        names = {
            "schema": Identifier(datastore.schema),
            "table": Identifier(events_table_name),
            "function": Identifier(function),
            "id_type": Identifier(datastore.originator_id_type),
            "channel": Identifier(self.channel_name),
        }
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{function}("
                "ids {id_type}[], versions bigint[], topics text[], states bytea[]) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ BEGIN "
                "SET LOCAL lock_timeout = '{lock_timeout}s'; "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "NOTIFY {channel}; "
                "RETURN QUERY INSERT INTO {schema}.{table} "
                "(originator_id, originator_version, topic, state) "
                "SELECT * FROM unnest(ids, versions, topics, states) "
                "RETURNING notification_id; "
                "END; $BODY$"
            ).format(lock_timeout=datastore.lock_timeout, **names)
        )
        self.insert_function_call = SQL(
            "SELECT t.id FROM {schema}.{function}(%s::{id_type}[], %s::bigint[], "
            "%s::text[], %b::bytea[]) AS t(id)"
        ).format(**names)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return None
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self.insert_function_call,
                (
                    [e.originator_id for e in stored_events],
                    [e.originator_version for e in stored_events],
                    [e.topic for e in stored_events],
                    [e.state for e in stored_events],
                ),
                prepare=True,
            )
            return [row["id"] for row in curs.fetchall()]
