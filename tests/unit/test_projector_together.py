"""Several read models fed by one scan of the log (the projector's loop, and rebuilds of
several read models) end exactly where each would on its own."""

from __future__ import annotations

import random
import sqlite3
import uuid
from pathlib import Path

import msgspec
import pytest
from chorus.bootstrap import PROJECTIONS
from chorus.contracts.feed import EventRecord
from chorus.projections.projector import step_together
from chorus.projections.readstore import Connection, ReadStore
from chorus.projections.runner import ProjectionRunner, rebuild_together
from chorus.projections.sessions import SessionsProjection
from eventsourcing.persistence import ApplicationRecorder, StoredEvent

from tests.conftest import ReadStores

from .conftest import FakeClock
from .test_batched_projections import History
from .test_tamper import write_history

#: Every read model ``chorus project`` runs, sessions first.
MODELS = tuple(PROJECTIONS.values())


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as conn:
        return {
            # Every row, in an order independent of how they were written.
            table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for model in MODELS
            for table in model().tables
        }


def each_on_its_own(
    recorder: ApplicationRecorder, path: Path
) -> dict[str, list[tuple[object, ...]]]:
    store = ReadStore(f"sqlite:///{path}")
    for model in MODELS:
        ProjectionRunner(recorder, store, model()).run_to_head()
    return dump(path)


def test_one_scan_for_every_read_model_ends_where_each_would_alone(
    recorder: ApplicationRecorder, clock: FakeClock, tmp_path: Path
) -> None:
    write_history(recorder, clock)
    store = ReadStore(f"sqlite:///{tmp_path}/read.db")
    runners = [ProjectionRunner(recorder, store, model(), batch_size=4) for model in MODELS]
    runners[1].run_to_head()  # one read model ahead of the others, as after a rebuild
    while step_together(runners):
        pass
    head = recorder.max_notification_id()
    assert [runner.position for runner in runners] == [head] * len(MODELS)
    assert dump(tmp_path / "read.db") == each_on_its_own(recorder, tmp_path / "alone.db")


def test_a_read_model_whose_batch_fails_does_not_hold_back_the_others(
    recorder: ApplicationRecorder, clock: FakeClock, read_stores: ReadStores
) -> None:
    """What the failing one wrote before it failed is rolled back; the others' rows and
    positions are committed."""
    write_history(recorder, clock)
    store = ReadStore(read_stores.url())

    class Broken(SessionsProjection):
        name = "broken"

        def apply(self, conn: Connection, record: EventRecord) -> None:
            conn.execute("INSERT INTO tracking (name, position) VALUES ('written', 1)")
            raise RuntimeError("a bug in this read model")

    runners = [ProjectionRunner(recorder, store, model()) for model in (Broken, *MODELS[1:])]
    for _ in range(3):
        step_together(runners)
    head = recorder.max_notification_id()
    assert [runner.position for runner in runners] == [0] + [head] * (len(MODELS) - 1)
    assert store.position("written") == 0
    rows = read_stores.rows(read_stores.url(), ["workflows", "agents"])
    alone = ReadStore(read_stores.url("alone"))
    for model in MODELS[1:]:
        ProjectionRunner(recorder, alone, model()).run_to_head()
    assert rows == read_stores.rows(read_stores.url("alone"), ["workflows", "agents"])


def test_the_projector_follows_a_rebuild_swapped_in_behind_its_back(
    recorder: ApplicationRecorder, clock: FakeClock, tmp_path: Path
) -> None:
    """The loop keeps each read model's position in memory between steps; a rebuild in
    another process moves it in the store, and the next batch's compare-and-set notices."""
    write_history(recorder, clock)
    store = ReadStore(f"sqlite:///{tmp_path}/read.db")
    runners = [ProjectionRunner(recorder, store, model(), batch_size=2) for model in MODELS]
    step_together(runners)
    elsewhere = ProjectionRunner(recorder, ReadStore(f"sqlite:///{tmp_path}/read.db"), MODELS[0]())
    elsewhere.rebuild()
    assert elsewhere.position > runners[0].known_position()
    for _ in range(100):  # bounded: a loop stuck on a stale position would never end
        if not step_together(runners):
            break
    head = recorder.max_notification_id()
    assert [runner.position for runner in runners] == [head] * len(MODELS)
    assert dump(tmp_path / "read.db") == each_on_its_own(recorder, tmp_path / "alone.db")


def test_rebuilding_every_read_model_together_matches_each_on_its_own(
    recorder: ApplicationRecorder, clock: FakeClock, tmp_path: Path
) -> None:
    write_history(recorder, clock)
    store = ReadStore(f"sqlite:///{tmp_path}/read.db")
    runners = [ProjectionRunner(recorder, store, model(), batch_size=3) for model in MODELS]
    rebuild_together(runners)
    assert dump(tmp_path / "read.db") == each_on_its_own(recorder, tmp_path / "alone.db")


def store_log(recorder: ApplicationRecorder, records: list[EventRecord]) -> None:
    """``records`` written to the event store as the engine stores them, each after a
    bookkeeping row (command dedup) that no read model folds."""
    rows = []
    for record in records:
        rows.append(StoredEvent(
            originator_id=uuid.uuid4(), originator_version=1, topic="command.CommandAccepted",
            state=b"{}",
        ))  # fmt: skip
        body = {
            "type": record.type, "schema_version": 1, "occurred_at": record.occurred_at,
            "actor": record.actor, "command_id": record.command_id, "correlation_id": None,
            "causation_id": None, "data": record.data, "prev_hash": "", "hash": "",
        }  # fmt: skip
        rows.append(StoredEvent(
            originator_id=uuid.UUID(record.aggregate_id), originator_version=record.version,
            topic=f"{record.aggregate}.{record.type}", state=msgspec.json.encode(body),
        ))  # fmt: skip
    recorder.insert_events(rows)


@pytest.mark.parametrize("page", [1, 7, 100, 100_000])
def test_a_rebuild_read_in_pages_equals_the_live_projector_on_every_kind_of_event(
    recorder: ApplicationRecorder, read_stores: ReadStores, page: int
) -> None:
    """The rebuild reads the log in raw pages of ``page`` rows and decodes each row once
    for every read model (``select_log``, ``record_of``); the live projector reads
    notifications and decodes per batch. A generated log of every kind of event the read
    models fold, between rows none of them folds, ends in the same rows; so does a
    rebuild in place over the live tables."""
    store_log(recorder, History(random.Random(page)).generate(300))
    tables = [table for model in MODELS for table in model().tables]
    live_url = read_stores.url("live")
    live = [ProjectionRunner(recorder, ReadStore(live_url), model()) for model in MODELS]
    while step_together(live):
        pass
    expected = read_stores.rows(live_url, tables)
    assert expected["sessions"] and expected["agents"] and expected["workflows"]
    rebuilt_url = read_stores.url("rebuilt")
    rebuilt = [ProjectionRunner(recorder, ReadStore(rebuilt_url), model()) for model in MODELS]
    assert rebuild_together(rebuilt, batch=page) == recorder.max_notification_id()
    assert read_stores.rows(rebuilt_url, tables) == expected
    rebuild_together(live, batch=page)
    assert read_stores.rows(live_url, tables) == expected
