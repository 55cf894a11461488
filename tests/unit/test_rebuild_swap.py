"""The rebuild's swap replaces live tables by the rebuilt ones whatever their old shape,
and each rebuild works in a scratch store of its own; on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

from chorus.projections.agents import AgentsProjection
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import ProjectionRunner
from chorus.projections.sessions import SessionsProjection
from eventsourcing.persistence import ApplicationRecorder

from tests.conftest import ReadStores

from .conftest import FakeClock
from .test_tamper import write_history


def columns(url: str, table: str) -> list[str]:
    store = ReadStore(url, readonly=True)
    try:
        cursor = store.connection().execute(f"SELECT * FROM {table} LIMIT 0")
        return [column[0] for column in cursor.description]  # type: ignore[attr-defined]
    finally:
        store.close()


def indexes(url: str) -> list[str]:
    store = ReadStore(url, readonly=True)
    sql = (
        "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"
        if url.startswith("sqlite")
        else "SELECT indexname FROM pg_indexes WHERE schemaname=current_schema() "
        "AND indexname NOT LIKE '%pkey'"
    )
    try:
        return sorted(r[0] for r in store.connection().execute(sql))
    finally:
        store.close()


def scratch_left(stores: ReadStores, store: ReadStore) -> list[str]:
    """Scratch stores a rebuild left behind: files beside the store, or schemas."""
    if stores.backend == "sqlite":
        return [p.name for p in stores.tmp_path.iterdir() if ".rebuild" in p.name]
    rows = store.connection().execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE ?",
        (f"rebuild\\_%\\_{os.getpid()}\\_%",),
    )
    return [r[0] for r in rows]


def test_a_live_table_of_an_older_shape_is_replaced_by_the_rebuilt_one(
    recorder: ApplicationRecorder, clock: FakeClock, read_stores: ReadStores
) -> None:
    write_history(recorder, clock)
    reference_url = read_stores.url("reference")
    ProjectionRunner(recorder, ReadStore(reference_url), SessionsProjection()).run_to_head()
    live_url = read_stores.url("read")
    legacy = SessionsProjection().ddl[0].rstrip().removesuffix(")") + ", legacy TEXT)"
    with ReadStore(live_url).transaction() as conn:  # written by an older version of the table
        conn.execute(legacy)
    runner = ProjectionRunner(recorder, ReadStore(live_url), SessionsProjection())
    assert "legacy" in columns(live_url, "sessions")
    runner.rebuild()
    assert columns(live_url, "sessions") == columns(reference_url, "sessions")
    tables = SessionsProjection().tables
    assert read_stores.rows(live_url, tables) == read_stores.rows(reference_url, tables)
    assert indexes(live_url) == indexes(reference_url)  # the indexes came along


def test_two_rebuilds_at_once_do_not_share_a_scratch_store(
    recorder: ApplicationRecorder, clock: FakeClock, read_stores: ReadStores, tmp_path: Path
) -> None:
    """The agents rebuild runs entirely while the sessions rebuild is filling its scratch."""
    write_history(recorder, clock)
    url = read_stores.url("read")
    store = ReadStore(url)
    sessions = ProjectionRunner(recorder, store, SessionsProjection(), batch_size=2)
    agents = ProjectionRunner(recorder, store, AgentsProjection())
    nested: list[int] = []

    def progress(position: int, head: int) -> None:
        if not nested:
            nested.append(agents.rebuild())

    sessions.rebuild(progress)
    assert nested
    reference_url = read_stores.url("reference")
    ProjectionRunner(recorder, ReadStore(reference_url), SessionsProjection()).run_to_head()
    tables = SessionsProjection().tables
    assert read_stores.rows(url, tables) == read_stores.rows(reference_url, tables)
    assert read_stores.rows(url, ["sessions"])["sessions"]
    assert scratch_left(read_stores, store) == []
