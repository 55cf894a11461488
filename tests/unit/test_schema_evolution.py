"""Schema evolution: events written in an old shape load, upcast, fold and still verify.

``tests/fixtures/events_v1.db`` was written by ``tests/fixtures/make_v1_store.py`` with
``ResultSubmitted`` at schema version 1 (before ``result_digest``).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from chorus.audit.bundle import create_signing_key, parse_public_key, verify_bundle
from chorus.audit.ledger import seal_all
from chorus.audit.verify import verify_store
from chorus.engine.domain.session import SessionState
from chorus.engine.processor import Processor
from chorus.events.codec import decode_record, stored_body, typed_event
from chorus.events.session import ResultSubmitted, result_digest
from chorus.projections.audit import AuditLog
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import ApplicationRecorder

from tests.fixtures.make_v1_store import FINISHED, OPEN, T0

from .conftest import FakeClock
from .test_processor import submit

FIXTURE = Path(__file__).parents[1] / "fixtures" / "events_v1.db"


@pytest.fixture
def old_store(tmp_path: Path) -> Iterator[ApplicationRecorder]:
    """A copy: opening a store may write to it, and the fixture must stay as committed."""
    copy = tmp_path / "events_v1.db"
    shutil.copy(FIXTURE, copy)
    recorder = open_recorder(f"sqlite:///{copy}")
    yield recorder
    close_recorder(recorder)


def results(recorder: ApplicationRecorder, sid: uuid.UUID) -> list[tuple[int, object]]:
    return [
        (stored_body(s).schema_version, decode_record(s))
        for s in recorder.select_events(sid)
        if s.topic == "session.ResultSubmitted"
    ]


def test_old_results_are_stored_in_the_old_shape_and_read_in_the_new(
    old_store: ApplicationRecorder,
) -> None:
    found = results(old_store, FINISHED)
    assert [stored for stored, _ in found] == [1, 1]
    for _, record in found:
        assert record.schema_version == 2  # type: ignore[attr-defined]
        data = record.data  # type: ignore[attr-defined]
        assert data["result_digest"] == result_digest(data["result"])
        assert typed_event(record).result_digest == data["result_digest"]  # type: ignore[arg-type, attr-defined]
    # Equal results in another key order have the same digest.
    assert found[0][1].data["result_digest"] == result_digest({"n": 1, "verdict": "lgtm"})  # type: ignore[attr-defined]


def test_old_events_verify_because_hashes_cover_the_stored_form(
    old_store: ApplicationRecorder,
) -> None:
    report = verify_store(old_store, now=T0)
    assert report.ok, report.problems
    assert report.unsealed == 0


def test_the_engine_folds_old_events_and_appends_new_ones_to_the_same_chain(
    old_store: ApplicationRecorder,
) -> None:
    clock = FakeClock(T0 + timedelta(minutes=10))  # before the old session's deadline
    replies = Processor(old_store, clock=clock).handle_batch([submit(str(OPEN), "b")])
    assert replies[0].status == "accepted"
    state = SessionState(id=OPEN)
    for stored in old_store.select_events(OPEN):
        state.apply(typed_event(decode_record(stored)))
    assert state.status == "failed"  # a's old result failed, require all
    assert all(isinstance(r, ResultSubmitted) and r.result_digest for r in state.results.values())
    assert [stored for stored, _ in results(old_store, OPEN)] == [1, 2]
    seal_all(old_store)
    assert verify_store(old_store, now=clock.now).ok


def test_a_bundle_of_old_events_verifies(old_store: ApplicationRecorder, tmp_path: Path) -> None:
    create_signing_key(tmp_path / "signing.key")
    audit = AuditLog(old_store, tmp_path / "signing.key")
    data = audit.export(aggregate="session", aggregate_id=FINISHED)
    assert verify_bundle(data, parse_public_key(audit.public_key())).events == 4
    second = msgspec.json.decode(data.splitlines()[2])
    assert second["stored"]["schema_version"] == 1
    assert "result_digest" not in second["stored"]["data"]
