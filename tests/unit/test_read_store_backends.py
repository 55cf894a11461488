"""The read store's promises, on every backend (SQLite, PostgreSQL): a read model not built
yet reads as empty, a batch's rows and its position commit together or not at all, and the
PostgreSQL spelling of read-model SQL."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from chorus.contracts.feed import EventRecord
from chorus.projections.agents import AgentsProjection, get_agent, list_agents
from chorus.projections.overview import status_counts
from chorus.projections.pgstore import translate
from chorus.projections.readstore import Connection, ReadStore, ReadStoreUnavailable
from chorus.projections.runner import ProjectionRunner
from chorus.projections.sessions import SessionsProjection, get_session, list_sessions
from chorus.projections.workflows import WorkflowsProjection, get_workflow, list_workflows
from eventsourcing.persistence import ApplicationRecorder

from tests.conftest import ReadStores

from .conftest import FakeClock
from .test_tamper import write_history


def test_a_read_model_not_built_yet_reads_as_empty(read_stores: ReadStores) -> None:
    """A gateway may start before any projector has created a table (or, on PostgreSQL,
    the schema): every query answers empty, none fails."""
    store = ReadStore(read_stores.url("fresh"), readonly=True)
    conn = store.connection()
    assert get_session(conn, "a5b7a9a8-4f0e-4d0e-9d6e-3a0f2b1c4d5e") is None
    assert list_sessions(conn).items == []
    assert get_workflow(conn, "w") is None
    assert list_workflows(conn).items == []
    assert get_agent(conn, "agent-1") is None
    assert list_agents(conn).items == []
    assert store.position("sessions") == 0
    store.close()


def test_fleet_counts_come_from_the_read_models(
    recorder: ApplicationRecorder, clock: FakeClock, read_stores: ReadStores
) -> None:
    """The console's and ``/metrics``' counts (``chorus.projections.overview``) on each backend:
    empty before a projector ran, by status after."""
    url = read_stores.url("read")
    empty = {"sessions": {}, "workflows": {}, "agents": {}, "queued": {}}
    assert status_counts(ReadStore(read_stores.url("fresh"), readonly=True).connection()) == empty
    write_history(recorder, clock)
    store = ReadStore(url)
    for model in (SessionsProjection(), WorkflowsProjection(), AgentsProjection()):
        ProjectionRunner(recorder, store, model).run_to_head()
    counts = status_counts(store.connection())
    assert sum(counts["sessions"].values()) == 3
    assert counts["sessions"]["open"] == 1
    store.close()


class FailsOnThird(SessionsProjection):
    """The sessions read model, failing on the third event it is given."""

    def __init__(self) -> None:
        self.seen = 0

    def apply(self, conn: Connection, record: EventRecord) -> None:
        self.seen += 1
        if self.seen == 3:
            raise RuntimeError("a bug in the projection")
        super().apply(conn, record)


def test_a_failed_batch_moves_neither_rows_nor_position(
    recorder: ApplicationRecorder, clock: FakeClock, read_stores: ReadStores
) -> None:
    write_history(recorder, clock)
    url = read_stores.url("read")
    runner = ProjectionRunner(recorder, ReadStore(url), FailsOnThird())
    with pytest.raises(RuntimeError, match="a bug"):
        runner.step()
    assert runner.position == 0
    assert read_stores.rows(url, ["sessions", "session_participants"]) == {
        "sessions": [],
        "session_participants": [],
    }
    runner.step()  # the same batch again, whole this time
    assert runner.position == recorder.max_notification_id()
    assert len(read_stores.rows(url, ["sessions"])["sessions"]) == 3


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE a=? AND b=?", "SELECT * FROM t WHERE a=%s AND b=%s"),
        # Quoted text and comments keep their question marks; every % is doubled.
        ("SELECT '?', \"a?\" FROM t -- why?\nWHERE x=?", "SELECT '?', \"a?\" FROM t -- why?\nWHERE x=%s"),
        ("SELECT 'it''s ?' WHERE a LIKE ?", "SELECT 'it''s ?' WHERE a LIKE %s"),
        ("SELECT '50%' WHERE a LIKE 'x%' AND b=?", "SELECT '50%%' WHERE a LIKE 'x%%' AND b=%s"),
        (
            "CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, r REAL, s TEXT) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS t (n BIGINT PRIMARY KEY, r DOUBLE PRECISION, s TEXT)",
        ),
        # Only table definitions change types: a query's words are left alone.
        ("SELECT integer_part FROM t WHERE real=?", "SELECT integer_part FROM t WHERE real=%s"),
    ],
)  # fmt: skip
def test_read_model_sql_in_postgresql_spelling(sql: str, expected: str) -> None:
    assert translate(sql) == expected


def test_an_unreachable_postgresql_is_read_store_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store: Any = ReadStore(
        f"postgresql://chorus:chorus@127.0.0.1:{port}/nothing?schema=s&connect_timeout=2",
        readonly=True,
    )
    with pytest.raises(ReadStoreUnavailable):
        store.connection()


def test_the_compose_layout_shares_one_postgresql_read_store() -> None:
    """Every Chorus service of ``compose.yaml`` reads and writes the read models in
    PostgreSQL, so the two gateways serve the same state; none keeps them in a file."""
    import yaml

    compose = yaml.safe_load((Path(__file__).parents[2] / "compose.yaml").read_text())
    chorus = {
        name: s for name, s in compose["services"].items()
        if "chorus" in s.get("command", []) and s.get("restart") != "no"  # not a one-shot
    }  # fmt: skip
    assert set(chorus) == {"engine", "projector", "gateway"}
    for service in chorus.values():
        url = service["environment"]["CHORUS_READ_STORE_URL"]
        assert url.startswith("postgresql://") and url.endswith("?schema=read")
    assert compose["services"]["gateway"]["deploy"]["replicas"] == 2
    assert "volumes" not in chorus["projector"]
