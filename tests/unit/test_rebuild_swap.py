"""The rebuild's swap replaces live tables by the rebuilt ones whatever their old shape,
and each rebuild works in a scratch file of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from eventsourcing.persistence import ApplicationRecorder

from projections.agents import AgentsProjection
from projections.readstore import ReadStore
from projections.runner import ProjectionRunner
from projections.sessions import SessionsProjection

from .conftest import FakeClock
from .test_tamper import write_history


def table_rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def columns(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_a_live_table_of_an_older_shape_is_replaced_by_the_rebuilt_one(
    recorder: ApplicationRecorder, clock: FakeClock, tmp_path: Path
) -> None:
    write_history(recorder, clock)
    reference = ReadStore(f"sqlite:///{tmp_path}/reference.db")
    ProjectionRunner(recorder, reference, SessionsProjection()).run_to_head()
    live_path = tmp_path / "read.db"
    legacy = SessionsProjection().ddl[0].rstrip().removesuffix(")") + ", legacy TEXT)"
    with sqlite3.connect(live_path) as conn:  # written by an older version of the table
        conn.execute(legacy)
    runner = ProjectionRunner(recorder, ReadStore(f"sqlite:///{live_path}"), SessionsProjection())
    assert "legacy" in columns(live_path, "sessions")
    runner.rebuild()
    assert columns(live_path, "sessions") == columns(reference.path, "sessions")
    for table in SessionsProjection().tables:
        assert table_rows(live_path, table) == table_rows(reference.path, table)
    with sqlite3.connect(live_path) as conn:  # the indexes came along
        live_indexes = sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"))  # fmt: skip
    with sqlite3.connect(reference.path) as conn:
        assert live_indexes == sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"))  # fmt: skip


def test_two_rebuilds_at_once_do_not_share_a_scratch_file(
    recorder: ApplicationRecorder, clock: FakeClock, tmp_path: Path
) -> None:
    """The agents rebuild runs entirely while the sessions rebuild is filling its scratch."""
    write_history(recorder, clock)
    store = ReadStore(f"sqlite:///{tmp_path}/read.db")
    sessions = ProjectionRunner(recorder, store, SessionsProjection(), batch_size=2)
    agents = ProjectionRunner(recorder, store, AgentsProjection())
    nested: list[int] = []

    def progress(position: int, head: int) -> None:
        if not nested:
            nested.append(agents.rebuild())

    sessions.rebuild(progress)
    assert nested
    reference = ReadStore(f"sqlite:///{tmp_path}/reference.db")
    ProjectionRunner(recorder, reference, SessionsProjection()).run_to_head()
    for table in SessionsProjection().tables:
        assert table_rows(store.path, table) == table_rows(reference.path, table)
    assert table_rows(store.path, "sessions")
    assert sorted(p.name for p in tmp_path.iterdir() if ".rebuild" in p.name) == []
