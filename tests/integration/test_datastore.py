"""``chorus.store.datastore``, the only code that reaches past the recorder interface,
checked on each backend: an eventsourcing release that moves what it relies on fails here.

PostgreSQL runs when ``CHORUS_TEST_POSTGRES_URL`` names a server (``.ci/run`` starts one).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from chorus.store.datastore import (
    Dialect,
    aggregate_recorder,
    close_recorder,
    insert_rows,
    reading,
    transaction,
)
from chorus.store.recorder import open_recorder, select_aggregate_notifications, select_log
from eventsourcing.persistence import (
    ApplicationRecorder,
    ConnectionPoolClosedError,
    OperationalError,
    StoredEvent,
)

from tests.postgres import database_url


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def recorder(url: str) -> Iterator[ApplicationRecorder]:
    rec = open_recorder(url)
    yield rec
    with contextlib.suppress(ConnectionPoolClosedError, OperationalError):
        close_recorder(rec)


def event(aggregate_id: uuid.UUID, version: int, topic: str = "session.Opened") -> StoredEvent:
    return StoredEvent(originator_id=aggregate_id, originator_version=version, topic=topic,
                       state=b'{"v": %d}' % version)  # fmt: skip


def test_the_dialect_names_the_events_table_its_position_and_stored_keys(
    recorder: ApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    recorder.insert_events([event(aggregate_id, 1), event(aggregate_id, 2)])
    d = Dialect(recorder)
    with transaction(recorder, commit=False) as cursor:
        cursor.execute(
            f"SELECT {d.columns()} FROM {d.table} WHERE originator_id={d.mark} "
            f"ORDER BY {d.position}",
            [d.key(aggregate_id)],
        )
        rows = cursor.fetchall()
    assert [r["originator_version"] for r in rows] == [1, 2]
    assert [r["position"] for r in rows] == [n.id for n in recorder.select_notifications(1, 10)]


def test_a_transaction_commits_only_when_asked(recorder: ApplicationRecorder) -> None:
    d = Dialect(recorder)
    table = d.beside("chorus_probe")
    with transaction(recorder, commit=True) as cursor:
        cursor.execute(f"CREATE TABLE {table} (n INTEGER)")
    with transaction(recorder, commit=False) as cursor:
        cursor.execute(f"INSERT INTO {table} (n) VALUES ({d.mark})", [1])
    with transaction(recorder, commit=True) as cursor:
        cursor.execute(f"INSERT INTO {table} (n) VALUES ({d.mark})", [2])
    with transaction(recorder, commit=False) as cursor:
        cursor.execute(f"SELECT n FROM {table}")
        assert [r["n"] for r in cursor.fetchall()] == [2]


def test_an_aggregate_recorder_beside_the_events_keeps_its_own_table(
    recorder: ApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    beside = aggregate_recorder(recorder, "chorus_probe_events")
    beside.insert_events([event(aggregate_id, 1, "snapshot")])
    assert [e.topic for e in beside.select_events(aggregate_id)] == ["snapshot"]
    assert recorder.max_notification_id() in (None, 0)  # the log saw nothing of it
    assert select_aggregate_notifications(recorder, aggregate_id) == []


def test_closing_a_recorder_releases_its_pool_and_loses_nothing(
    recorder: ApplicationRecorder, request: pytest.FixtureRequest
) -> None:
    aggregate_id = uuid.uuid4()
    recorder.insert_events([event(aggregate_id, 1)])
    close_recorder(recorder)
    with (
        pytest.raises((ConnectionPoolClosedError, OperationalError)),
        transaction(recorder, commit=False) as cursor,
    ):
        cursor.execute("SELECT 1")
    again = open_recorder(request.getfixturevalue("url"))
    try:
        assert [n.originator_id for n in again.select_notifications(1, 10)] == [aggregate_id]
    finally:
        close_recorder(again)


def test_a_read_sees_what_was_committed_and_writes_nothing_itself(
    recorder: ApplicationRecorder,
) -> None:
    aggregate_id = uuid.uuid4()
    recorder.insert_events([event(aggregate_id, 1)])
    d = Dialect(recorder)
    with reading(recorder) as cursor:
        cursor.execute(f"SELECT count(*) AS n FROM {d.table}")
        assert cursor.fetchone()["n"] == 1
    with (
        pytest.raises(Exception, match=r"(?i)no such table|does not exist"),
        reading(recorder) as cursor,
    ):
        cursor.execute(f"SELECT * FROM {d.beside('chorus_absent')}")
    with reading(recorder) as cursor:  # the failed statement left nothing behind
        cursor.execute("SELECT 1 AS one")
        assert cursor.fetchone()["one"] == 1


def test_insert_rows_writes_every_row_and_passes_the_suffix(recorder: ApplicationRecorder) -> None:
    d = Dialect(recorder)
    table = d.beside("chorus_probe_rows")
    with transaction(recorder, commit=True) as cursor:
        cursor.execute(f"CREATE TABLE {table} (n BIGINT PRIMARY KEY, label TEXT)")
    columns = [("n", "bigint"), ("label", "text")]
    with transaction(recorder, commit=True) as cursor:
        insert_rows(cursor, d, table, columns, [(1, "a"), (2**40, "b")])
        insert_rows(cursor, d, table, columns, [])
    with transaction(recorder, commit=True) as cursor:
        insert_rows(
            cursor, d, table, columns, [(1, "again"), (3, "c")], "ON CONFLICT (n) DO NOTHING"
        )
    with reading(recorder) as cursor:
        cursor.execute(f"SELECT n, label FROM {table} ORDER BY n")
        assert [(r["n"], r["label"]) for r in cursor.fetchall()] == [
            (1, "a"),
            (3, "c"),
            (2**40, "b"),
        ]


def test_select_log_reads_the_rows_select_notifications_reads(
    recorder: ApplicationRecorder,
) -> None:
    """Same rows, positions, order and bounds: a rebuild reads the log with ``select_log``
    where the live projector reads notifications."""
    ids = [uuid.uuid4() for _ in range(3)]
    for version in (1, 2, 3):
        recorder.insert_events([event(aggregate_id, version) for aggregate_id in ids])
    expected = [
        (n.id, n.originator_id, n.originator_version, n.topic, n.state)
        for n in recorder.select_notifications(3, 5, stop=8)
    ]
    rows = select_log(recorder, gt=2, lte=8, limit=5)
    assert [(at, uuid.UUID(str(key)), *rest) for at, key, *rest in rows] == expected
    assert [row[0] for row in select_log(recorder, gt=7, lte=100, limit=10)] == [8, 9]
    assert select_log(recorder, gt=9, lte=100, limit=10) == []
