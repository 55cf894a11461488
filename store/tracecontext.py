"""Trace contexts kept next to the events, so that processes reading the log (the relay,
the projector) can continue the trace of the command that recorded an event.

The engine writes ``(actor, command_id) -> traceparent`` before the batch that records
the command commits, in a table of its own, and only for commands that arrived traced
(tracing is off by default, and then nothing is written). Rows older than an hour are
pruned as new ones arrive: a reader that is further behind than that loses only spans.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from chorus.store.datastore import Dialect, create_tables, reading, transaction
from eventsourcing.persistence import ApplicationRecorder

TABLE = "chorus_trace_context"
KEEP_SECONDS = 3600


def _table(d: Dialect) -> str:
    return d.beside(TABLE)


def ensure_table(recorder: ApplicationRecorder) -> None:
    d = Dialect(recorder)
    create_tables(
        recorder,
        f"CREATE TABLE IF NOT EXISTS {_table(d)} (actor TEXT NOT NULL, "
        "command_id TEXT NOT NULL, traceparent TEXT NOT NULL, created DOUBLE PRECISION "
        "NOT NULL, PRIMARY KEY (actor, command_id))",
    )


def save(recorder: ApplicationRecorder, rows: Iterable[tuple[str, str, str]]) -> None:
    """Record ``(actor, command_id, traceparent)`` rows (a retried command's new context
    replaces the old one) and prune old rows, in one transaction."""
    rows = list(rows)
    if not rows:
        return
    d, now = Dialect(recorder), time.time()
    m = d.mark
    with transaction(recorder, commit=True) as cursor:
        for actor, command_id, value in rows:
            cursor.execute(
                f"INSERT INTO {_table(d)} (actor, command_id, traceparent, created) "
                f"VALUES ({m}, {m}, {m}, {m}) ON CONFLICT (actor, command_id) DO UPDATE "
                "SET traceparent = EXCLUDED.traceparent, created = EXCLUDED.created",
                (actor, command_id, value, now),
            )
        cursor.execute(f"DELETE FROM {_table(d)} WHERE created < {m}", (now - KEEP_SECONDS,))


def load(
    recorder: ApplicationRecorder, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """The recorded traceparent of each ``(actor, command_id)`` that has one."""
    wanted = set(keys)
    if not wanted:
        return {}
    d = Dialect(recorder)
    ids = sorted({command_id for _, command_id in wanted})
    marks = ", ".join(d.mark for _ in ids)
    with reading(recorder) as cursor:
        try:
            cursor.execute(
                f"SELECT actor, command_id, traceparent FROM {_table(d)} "
                f"WHERE command_id IN ({marks})",
                ids,
            )
        except Exception:  # no table yet: nothing was traced
            return {}
        found = {(row["actor"], row["command_id"]): row["traceparent"] for row in cursor.fetchall()}
    return {key: value for key, value in found.items() if key in wanted}
