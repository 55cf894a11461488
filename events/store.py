"""Opening the event store (an eventsourcing application recorder) from a database URL."""

from __future__ import annotations

from pathlib import Path
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
    table = recorder.events_table_name  # type: ignore[attr-defined]
    datastore = recorder.datastore  # type: ignore[attr-defined]
    if isinstance(datastore, SQLiteDatastore):
        key: object = aggregate_id.hex
        position_column, mark = "rowid", "?"
    else:
        # Identifiers come from the recorder's own settings, never from a request.
        table = f'"{datastore.schema}"."{table}"'
        key = aggregate_id
        position_column, mark = "notification_id", "%s"
    sql = (
        f"SELECT {position_column} AS position, originator_id, originator_version, topic, state "
        f"FROM {table} WHERE originator_id={mark} AND originator_version>{mark} "
    )
    params: list[object] = [key, gt]
    if lte is not None:
        sql += f"AND originator_version<={mark} "
        params.append(lte)
    sql += f"ORDER BY originator_version LIMIT {mark}"
    params.append(limit)
    with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        Notification(
            id=row["position"],
            originator_id=aggregate_id,
            originator_version=row["originator_version"],
            topic=row["topic"],
            state=bytes(row["state"]),
        )
        for row in rows
    ]
