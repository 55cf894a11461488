"""Opening the event store (an eventsourcing application recorder) from a database URL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from uuid import UUID

from chorus.sqlite_wal import leave_checkpoints, prepare_wal
from chorus.store.datastore import Dialect, create_events_table, reading
from eventsourcing.persistence import ApplicationRecorder, InfrastructureFactory, Notification
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteConnection, SQLiteConnectionPool
from msgspec import Struct


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
            "APPLICATION_RECORDER_TOPIC": "chorus.store.pgrecorder:ArrayInsertRecorder",
        }
        schema = parse_qs(url.query).get("schema")
        if schema:
            env["POSTGRES_SCHEMA"] = schema[0]
        return env
    raise ValueError(f"unsupported database URL {database_url!r} (use sqlite:/// or postgresql://)")


class _NoInlineCheckpoints(SQLiteConnectionPool):
    """eventsourcing's pool, whose connections leave the WAL's checkpoints to another."""

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        with connection.cursor() as cursor:
            leave_checkpoints(cursor.connection)
        return connection


def open_recorder(database_url: str, *, inline_checkpoints: bool = True) -> ApplicationRecorder:
    """The application recorder: events, the notification log and optimistic concurrency.

    Its tables are created here rather than by eventsourcing's factory, under the schema's
    lock: processes opening a fresh PostgreSQL schema at once would race otherwise.

    ``inline_checkpoints=False`` (SQLite only): its commits never copy the WAL back into
    the database file; the caller runs ``chorus.engine.adapters.walcheckpoints`` on
    ``sqlite_file(recorder)`` instead (the engine's writer, see ``chorus.sqlite_wal``)."""
    env = {**recorder_env(database_url), "CREATE_TABLE": "no"}
    if "SQLITE_DBNAME" in env:  # before eventsourcing's own switch, which does not retry
        prepare_wal(env["SQLITE_DBNAME"])
    recorder = InfrastructureFactory.construct(env).application_recorder()
    if not inline_checkpoints and isinstance(recorder, SQLiteApplicationRecorder):
        # Swapped before any connection is made (the factory makes none).
        pool = recorder.datastore.pool
        recorder.datastore.pool = _NoInlineCheckpoints(
            db_name=pool.db_name, lock_timeout=pool.lock_timeout
        )
        pool.close()
    create_events_table(recorder)
    return recorder


def sqlite_file(recorder: ApplicationRecorder) -> str | None:
    """The SQLite file behind ``recorder`` (None: another database, or SQLite in memory)."""
    if not isinstance(recorder, SQLiteApplicationRecorder):
        return None
    pool = recorder.datastore.pool
    return None if pool.is_sqlite_memory_mode else pool.db_name


def fetch_where(
    recorder: ApplicationRecorder,
    source: str,
    conditions: Sequence[tuple[str, object | None]],
    *,
    order_by: str,
    limit: int,
    ready: Callable[[Any], bool] | None = None,
) -> list[Any]:
    """``SELECT <source> WHERE ... ORDER BY ... LIMIT`` (``reading``: no transaction of its own).

    Each condition is ``(column and operator, value)``, e.g. ``("position>", 5)``; one
    whose value is None is left out, so optional bounds need no string building at the
    call site. ``ready(cursor)`` may say the source does not exist yet (no rows).
    """
    d = Dialect(recorder)
    used = [(clause, value) for clause, value in conditions if value is not None]
    where = " AND ".join(f"{clause}{d.mark}" for clause, _ in used) or "1=1"
    sql = f"SELECT {source} WHERE {where} ORDER BY {order_by} LIMIT {d.mark}"
    with reading(recorder) as cursor:
        if ready is not None and not ready(cursor):
            return []
        cursor.execute(sql, [value for _, value in used] + [limit])
        return list(cursor.fetchall())


class RawRow(Struct, kw_only=True, frozen=True):
    """A row exactly as stored: ``key`` is the originator id's stored text (on SQLite the
    recorder writes ``uuid.hex``; PostgreSQL stores a ``uuid`` and reads back its
    canonical text), so a re-spelled id is visible instead of normalised away."""

    position: int
    key: str
    version: int
    topic: str
    state: bytes

    def notification(self) -> Notification:
        """The row as a notification; raises ValueError if the key is not a UUID."""
        return Notification(
            id=self.position,
            originator_id=UUID(self.key),
            originator_version=self.version,
            topic=self.topic,
            state=self.state,
        )

    def key_in_recorder_form(self, sqlite: bool) -> bool:
        """Whether the key is spelled as the recorder writes it (what its reads match)."""
        try:
            aggregate_id = UUID(self.key)
        except ValueError:
            return False
        return self.key == (aggregate_id.hex if sqlite else str(aggregate_id))


def raw_row(row: Any) -> RawRow:
    """A row of ``Dialect.columns()`` as a ``RawRow``.

    A hand-edited SQLite row can come back as TEXT instead of a BLOB: it is read as its
    UTF-8 bytes, so the verifier judges the content rather than crash on the type."""
    state = row["state"]
    return RawRow(
        position=int(row["position"]),
        key=str(row["originator_id"]),
        version=int(row["originator_version"]),
        topic=str(row["topic"]),
        state=state.encode() if isinstance(state, str) else bytes(state),
    )


def select_raw_rows(
    recorder: ApplicationRecorder, *, gt: int | None, lte: int, limit: int
) -> list[RawRow]:
    """Rows in position order up to ``lte``, after ``gt`` (None: from the very first row,
    including any at position 0 or below, which the recorder's own reads skip)."""
    d = Dialect(recorder)
    rows = fetch_where(
        recorder, f"{d.columns()} FROM {d.table}",
        [(f"{d.position}<=", lte), (f"{d.position}>", gt)],
        order_by=d.position, limit=limit,
    )  # fmt: skip
    return [raw_row(row) for row in rows]


#: A row of the notification log as ``select_log`` returns it: (position, aggregate id as
#: stored, version, topic, state).
LogRow = tuple[int, Any, int, str, bytes]


def select_log(recorder: ApplicationRecorder, *, gt: int, lte: int, limit: int) -> list[LogRow]:
    """The notification log after position ``gt`` up to ``lte``, at most ``limit`` rows in
    position order, in one query: the rows ``select_notifications(gt + 1, limit, stop=lte)``
    returns, as plain tuples. The aggregate id is as the store returns it (SQLite: the
    recorder's hex text; PostgreSQL: a UUID): a reader of the whole log (a rebuild) turns
    each id into text once per aggregate, where a ``Notification`` builds a ``UUID`` per
    row (with the rest of ``select_notifications``, a fifth of a rebuild, profiled)."""
    d = Dialect(recorder)
    sql = (
        f"SELECT {d.columns()} FROM {d.table} WHERE {d.position}>{d.mark} "
        f"AND {d.position}<={d.mark} ORDER BY {d.position} LIMIT {d.mark}"
    )
    with reading(recorder) as cursor:
        cursor.execute(sql, [gt, lte, limit])
        rows = cursor.fetchall()
    if d.sqlite:  # sqlite3.Row unpacks as a tuple
        return list(rows)
    return [
        (r["position"], r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
        for r in rows
    ]


def count_rows(recorder: ApplicationRecorder, *, lte: int) -> int:
    """How many rows the store holds up to position ``lte`` (with no lower bound)."""
    d = Dialect(recorder)
    with reading(recorder) as cursor:
        cursor.execute(f"SELECT count(*) AS n FROM {d.table} WHERE {d.position}<={d.mark}", [lte])
        return int(cursor.fetchone()["n"])


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
    after_position: int | None = None,
) -> list[Notification]:
    """An aggregate's events *with* their global positions, oldest first.

    eventsourcing's ``select_events`` leaves positions out, and history records need
    them; this reads the same table through the recorder's own connection pool.
    """
    d = Dialect(recorder)
    rows = fetch_where(
        recorder, f"{d.columns()} FROM {d.table}",
        [("originator_id=", d.key(aggregate_id)), ("originator_version>", gt),
         ("originator_version<=", lte), (f"{d.position}>", after_position)],
        order_by="originator_version", limit=limit,
    )  # fmt: skip
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
    d = Dialect(recorder)
    by_key = {d.key(a): a for a in aggregate_ids}
    if d.sqlite:
        marks = ",".join("?" * len(by_key))
        where, params = f"originator_id IN ({marks})", list(by_key)
    else:
        where, params = "originator_id = ANY(%s)", [list(by_key)]
    sql = f"SELECT {d.columns()} FROM {d.table} WHERE {where} AND originator_version=1"
    with reading(recorder) as cursor:
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
