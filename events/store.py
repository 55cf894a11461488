"""Opening the event store (an eventsourcing application recorder) from a database URL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, InfrastructureFactory, Notification
from eventsourcing.sqlite import SQLiteDatastore


def recorder_env(database_url: str) -> dict[str, str]:
    """eventsourcing settings for ``sqlite:///path`` or ``postgresql://user:pw@host:port/db``."""
    url = urlparse(database_url)
    if url.scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
        path = unquote(database_url.split("://", 1)[1][1:])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    if url.scheme in ("postgres", "postgresql"):
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": url.path.lstrip("/"),
            "POSTGRES_HOST": url.hostname or "localhost",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or ""),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
        }
        schema = parse_qs(url.query).get("schema")
        if schema:
            env["POSTGRES_SCHEMA"] = schema[0]
        return env
    raise ValueError(f"unsupported database URL {database_url!r} (use sqlite:/// or postgresql://)")


def open_recorder(database_url: str) -> ApplicationRecorder:
    """The application recorder: events, the notification log and optimistic concurrency."""
    factory = InfrastructureFactory.construct(recorder_env(database_url))
    return factory.application_recorder()


class _Dialect:
    """What differs between the recorders for our own read queries."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        table = recorder.events_table_name  # type: ignore[attr-defined]
        datastore = recorder.datastore  # type: ignore[attr-defined]
        self.sqlite = isinstance(datastore, SQLiteDatastore)
        if self.sqlite:
            self.table, self.position, self.mark = table, "rowid", "?"
        else:
            # Identifiers come from the recorder's own settings, never from a request.
            self.table = f'"{datastore.schema}"."{table}"'
            self.position, self.mark = "notification_id", "%s"

    def key(self, aggregate_id: UUID) -> object:
        return aggregate_id.hex if self.sqlite else aggregate_id

    def columns(self) -> str:
        return f"{self.position} AS position, originator_id, originator_version, topic, state"


def _notification(row: Any, aggregate_id: UUID) -> Notification:
    return Notification(
        id=row["position"],
        originator_id=aggregate_id,
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )


def select_aggregate_notifications(
    recorder: ApplicationRecorder,
    aggregate_id: UUID,
    *,
    gt: int = 0,
    lte: int | None = None,
    limit: int = 1000,
) -> list[Notification]:
    """An aggregate's events *with* their global positions, oldest first.

    eventsourcing's ``select_events`` leaves positions out, and history records need
    them; this reads the same table through the recorder's own connection pool.
    """
    d = _Dialect(recorder)
    m = d.mark
    sql = f"SELECT {d.columns()} FROM {d.table} WHERE originator_id={m} AND originator_version>{m} "
    params: list[object] = [d.key(aggregate_id), gt]
    if lte is not None:
        sql += f"AND originator_version<={m} "
        params.append(lte)
    sql += f"ORDER BY originator_version LIMIT {m}"
    params.append(limit)
    with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [_notification(row, aggregate_id) for row in rows]


def select_first_events(
    recorder: ApplicationRecorder, aggregate_ids: list[UUID]
) -> dict[UUID, Notification]:
    """The first event of each of these aggregates that exists, in one query.

    The engine looks up a whole batch's dedup records this way: one round trip per batch
    instead of one per command.
    """
    if not aggregate_ids:
        return {}
    d = _Dialect(recorder)
    by_key = {d.key(a): a for a in aggregate_ids}
    if d.sqlite:
        marks = ",".join("?" * len(by_key))
        where, params = f"originator_id IN ({marks})", list(by_key)
    else:
        where, params = "originator_id = ANY(%s)", [list(by_key)]
    sql = f"SELECT {d.columns()} FROM {d.table} WHERE {where} AND originator_version=1"
    with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    found = {}
    for row in rows:
        raw = row["originator_id"]
        aggregate_id = by_key.get(raw) or UUID(str(raw))
        found[aggregate_id] = _notification(row, aggregate_id)
    return found


def select_topics_after(
    recorder: ApplicationRecorder, position: int, topics: list[str], limit: int = 1000
) -> tuple[Sequence[Notification], int]:
    """The next notifications of ``topics`` after ``position``, and the position to go on
    from.

    When none of the rest of the log matches, the position jumps to the log's end (read
    before the query, so nothing committed meanwhile is skipped): followers of rare topics
    (agents, timers) then scan only what is new, not everything since their last match.
    """
    end = recorder.max_notification_id() or 0
    if end <= position:
        return [], position
    batch = recorder.select_notifications(position + 1, limit, stop=end, topics=topics)
    if len(batch) < limit:
        return batch, end
    return batch, batch[-1].id
