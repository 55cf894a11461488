"""One behavioural suite for the event store, run against every backend (SQLite, PostgreSQL).

PostgreSQL runs when ``CHORUS_TEST_POSTGRES_URL`` names a server (``.ci/run`` starts one);
each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chorus.audit.ledger import last_seal, seal_all
from chorus.audit.verify import verify_store
from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.events.codec import decode_record, is_domain_topic
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import ProjectionRunner
from chorus.projections.sessions import SessionsProjection, get_session
from chorus.store.datastore import Dialect, transaction
from chorus.store.recorder import open_recorder, select_aggregate_notifications

from tests.postgres import database_url

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


def open_cmd(sid: str, participants: list[str], command_id: str | None = None) -> Command:
    return Command(
        actor="coord",
        handler=HANDLERS[("session", "open")],
        envelope=Envelope(
            command_id=command_id or uuid.uuid4().hex,
            payload=OpenSession(
                session_id=sid, participants=participants, task=Task(description="t")
            ),
        ),
    )


def submit_cmd(sid: str, agent: str, command_id: str | None = None, **kw: Any) -> Command:
    return Command(
        actor=agent,
        handler=HANDLERS[("session", "submit_result")],
        envelope=Envelope(
            command_id=command_id or uuid.uuid4().hex,
            payload=SubmitResult(session_id=sid, result={"v": 1}, **kw),
        ),
    )


def test_a_batch_is_one_transaction_with_contiguous_positions(store_url: str) -> None:
    processor = Processor(open_recorder(store_url), clock=lambda: NOW)
    sids = [str(uuid.uuid4()) for _ in range(5)]
    replies = processor.handle_batch([open_cmd(s, ["a", "b"]) for s in sids])
    assert [r.status for r in replies] == ["accepted"] * 5
    # Each command writes its event then its dedup record: positions step by two.
    positions = [r.position for r in replies]
    assert positions == list(range(positions[0], positions[0] + 10, 2))
    notifications = processor.recorder.select_notifications(1, 100)
    assert len(notifications) == 10
    assert sum(is_domain_topic(n.topic) for n in notifications) == 5


def test_history_of_an_aggregate_carries_its_global_positions(store_url: str) -> None:
    recorder = open_recorder(store_url)
    processor = Processor(recorder, clock=lambda: NOW)
    sid = str(uuid.uuid4())
    other = str(uuid.uuid4())
    processor.handle_batch([open_cmd(sid, ["a", "b"]), open_cmd(other, ["a"])])
    processor.handle_batch([submit_cmd(sid, "a"), submit_cmd(other, "a"), submit_cmd(sid, "b")])
    history = select_aggregate_notifications(recorder, uuid.UUID(sid))
    log = {n.id: n for n in recorder.select_notifications(1, 100) if str(n.originator_id) == sid}
    assert [n.id for n in history] == sorted(log)
    assert [n.originator_version for n in history] == [1, 2, 3, 4]
    assert [decode_record(n).type for n in history][-1] == "SessionFinalised"
    assert [
        n.id for n in select_aggregate_notifications(recorder, uuid.UUID(sid), gt=2, limit=1)
    ] == [sorted(log)[2]]


def test_a_repeat_after_restart_is_a_duplicate_with_the_original_outcome(store_url: str) -> None:
    sid = str(uuid.uuid4())
    first = Processor(open_recorder(store_url), clock=lambda: NOW)
    accepted = first.handle_batch([open_cmd(sid, ["a"], "once")])[0]
    again = Processor(open_recorder(store_url), clock=lambda: NOW).handle_batch(
        [open_cmd(sid, ["a"], "once")]
    )[0]
    assert again.status == "duplicate"
    assert (again.aggregate_id, again.version, again.position) == (
        accepted.aggregate_id,
        accepted.version,
        accepted.position,
    )


def test_stale_caches_on_two_workers_conflict_and_retry_without_loss(store_url: str) -> None:
    sid = str(uuid.uuid4())
    one = Processor(open_recorder(store_url), clock=lambda: NOW)
    two = Processor(open_recorder(store_url), clock=lambda: NOW)
    one.handle_batch([open_cmd(sid, ["a", "b", "c"])])
    two.load(HANDLERS[("session", "open")], uuid.UUID(sid))  # both cache version 1
    assert one.handle_batch([submit_cmd(sid, "a")])[0].version == 2
    late = two.handle_batch([submit_cmd(sid, "b")])[0]
    assert late.status == "accepted"
    assert late.version == 3
    versions = [
        n.originator_version for n in select_aggregate_notifications(one.recorder, uuid.UUID(sid))
    ]
    assert versions == [1, 2, 3]


def test_projection_equals_its_rebuild(store_url: str, tmp_path: Path) -> None:
    recorder = open_recorder(store_url)
    processor = Processor(recorder, clock=lambda: NOW)
    sids = [str(uuid.uuid4()) for _ in range(3)]
    processor.handle_batch([open_cmd(s, ["a", "b"]) for s in sids])
    processor.handle_batch([submit_cmd(sids[0], "a"), submit_cmd(sids[0], "b", success=False)])
    processor.handle_batch([submit_cmd(sids[1], "a")])
    live = ProjectionRunner(
        recorder, ReadStore(f"sqlite:///{tmp_path}/live.db"), SessionsProjection()
    )
    live.run_to_head()
    rebuilt = ProjectionRunner(
        recorder, ReadStore(f"sqlite:///{tmp_path}/re.db"), SessionsProjection()
    )
    rebuilt.rebuild()
    for sid in sids:
        assert get_session(live.store.connection(), sid) == get_session(
            rebuilt.store.connection(), sid
        )
    view = get_session(live.store.connection(), sids[0])
    assert view is not None
    assert view.status == "failed"
    assert live.position == rebuilt.position == recorder.max_notification_id()


def test_a_follower_of_rare_topics_skips_to_the_end_of_the_log(store_url: str) -> None:
    """Timers, process managers and the agent directory follow a few topics: with no match
    left they move to the log's end, so the next read scans only what is new."""
    from chorus.store.recorder import select_topics_after

    recorder = open_recorder(store_url)
    processor = Processor(recorder, clock=lambda: NOW)
    sids = [str(uuid.uuid4()) for _ in range(3)]
    processor.handle_batch([open_cmd(sid, ["a"]) for sid in sids])
    end = recorder.max_notification_id()
    opened = ["session.SessionOpened"]
    batch, position = select_topics_after(recorder, 0, opened)
    assert [str(n.originator_id) for n in batch] == sids and position == end
    assert select_topics_after(recorder, position, opened) == ([], end)
    rare, position = select_topics_after(recorder, 0, ["agent.AgentRegistered"])
    assert rare == [] and position == end
    # Paging: a full page stops at its last match, so nothing is skipped.
    page, position = select_topics_after(recorder, 0, opened, limit=2)
    assert len(page) == 2 and position == page[-1].id
    rest, position = select_topics_after(recorder, position, opened, limit=2)
    assert [str(n.originator_id) for n in rest] == sids[2:] and position == end


def test_the_seal_ledger_verifies_and_catches_a_deleted_row(store_url: str) -> None:
    recorder = open_recorder(store_url)
    processor = Processor(recorder, clock=lambda: NOW)
    sids = [str(uuid.uuid4()) for _ in range(3)]
    processor.handle_batch([open_cmd(s, ["a", "b"]) for s in sids])
    processor.handle_batch([submit_cmd(s, "a") for s in sids])
    assert last_seal(recorder) is None
    head = recorder.max_notification_id()
    assert seal_all(recorder) == head
    assert seal_all(recorder) == 0  # idempotent
    processor.handle_batch([submit_cmd(sids[0], "b")])
    report = verify_store(recorder, now=NOW)
    assert report.ok, report.problems
    assert (report.sealed_through, report.unsealed) == (head, 3)  # result, verdict, dedup

    victim = select_aggregate_notifications(recorder, uuid.UUID(sids[1]))[-1]
    d = Dialect(recorder)
    with transaction(recorder, commit=True) as cursor:
        cursor.execute(f"DELETE FROM {d.table} WHERE {d.position}={d.mark}", [victim.id])
    first = verify_store(recorder, now=NOW).first
    assert first is not None
    assert (first.position, first.kind, first.aggregate_id) == (victim.id, "deleted", sids[1])
