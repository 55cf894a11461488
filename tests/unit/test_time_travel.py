"""Time travel agrees with the engine's folds: the view at version N (or as of the time of
event N) is what ``SessionState`` / ``WorkflowState`` say after the first N events.

Random histories are written through the real processor to a real SQLite store; the past
views are rebuilt by ``chorus.projections.timetravel`` from that store alone.
"""

from __future__ import annotations

import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from chorus.contracts.agents import RegisterAgent
from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, ReportParticipantLost, Task
from chorus.contracts.workflows import CompletePhase, ReportProgress, StartPhase, StartWorkflow
from chorus.engine.domain.session import SessionState
from chorus.engine.domain.workflow import WorkflowState
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.events.codec import decode_record, typed_event
from chorus.projections.history import History
from chorus.projections.timetravel import state_at
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import FakeClock
from .test_processor import cancel, submit, timeout

AGENTS = ["a", "b", "c", "d"]

action = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(AGENTS), st.booleans()),
    st.tuples(st.just("cancel"), st.just(""), st.just(False)),
    st.tuples(st.just("timeout"), st.just(""), st.just(False)),
    # A participant goes offline: the session's policy waits, fails or replaces it.
    st.tuples(st.just("lose"), st.sampled_from(AGENTS), st.just(False)),
)
SPARES = ["s1", "s2"]  # registered agents a "replace" session can take


def lose(sid: str, agent: str, command_id: str) -> Command:
    return Command(actor="system", handler=HANDLERS[("session", "participant_lost")],
                   envelope=Envelope(command_id=command_id,
                                     payload=ReportParticipantLost(session_id=sid, agent_id=agent)))  # fmt: skip


def open_with_policy(sid: str, participants: list[str], policy: str) -> Command:
    payload = OpenSession(session_id=sid, participants=participants, task=Task(description="w"),
                          timeout_seconds=600, on_participant_lost=policy)  # fmt: skip
    return Command(actor="boss", handler=HANDLERS[("session", "open")],
                   envelope=Envelope(command_id=f"open-{sid}", payload=payload))  # fmt: skip


def register_spares() -> list[Command]:
    return [
        Command(actor=name, handler=HANDLERS[("agent", "register")],
                envelope=Envelope(command_id=f"reg-{name}", payload=RegisterAgent(name=name)))
        for name in SPARES
    ]  # fmt: skip


def engine_folds(records: list[Any], state: Any) -> list[Any]:
    """The engine's state after each event (index i: after i + 1 events)."""
    out = []
    for record in records:
        state.apply(typed_event(record))
        out.append(
            {
                "status": state.status,
                "version": state.version,
                "participants": list(state.participants),
                "results": {a: (r.success, r.output_hash) for a, r in state.results.items()},
                "pending": state.pending,
                "reason": state.outcome_reason,
            }
        )
    return out


def session_view(view: Any) -> dict[str, Any]:
    return {
        "status": view.status,
        "version": view.version,
        "participants": view.participants,
        "results": {a: (r.success, r.output_hash) for a, r in view.results.items()},
        "pending": view.pending,
        "reason": view.outcome["reason"] if view.outcome else None,
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    participants=st.integers(min_value=1, max_value=4),
    actions=st.lists(action, max_size=8),
    gaps=st.lists(st.integers(min_value=0, max_value=400), min_size=9, max_size=9),
    policy=st.sampled_from(["wait", "fail_fast", "replace"]),
)
def test_session_views_at_every_version_and_time_agree_with_the_engine_fold(
    participants: int, actions: list[tuple[str, str, bool]], gaps: list[int], policy: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        recorder = open_recorder(f"sqlite:///{tmp}/e.db")
        clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
        processor = Processor(recorder, clock=clock)
        sid = str(uuid.uuid4())
        processor.handle_batch(register_spares())
        processor.handle_batch([open_with_policy(sid, AGENTS[:participants], policy)])
        for (kind, agent, success), gap in zip(actions, gaps, strict=False):
            clock.advance(seconds=gap)  # gap 0: two commands at one instant
            if kind == "submit":
                command = submit(sid, agent, f"s-{agent}-{clock.now}", success=success)
            elif kind == "lose":
                command = lose(sid, agent, f"l-{agent}-{clock.now}")
            elif kind == "cancel":
                command = cancel(sid, command_id=f"c-{clock.now}")
            else:
                command = timeout(sid)
            processor.handle_batch([command])
        records = [decode_record(s) for s in recorder.select_events(uuid.UUID(sid))]
        expected = engine_folds(records, SessionState(id=uuid.UUID(sid)))
        history = History("", recorder=recorder)

        for version in range(1, len(records) + 1):
            past = state_at(history, "session", sid, at_version=version)
            assert past is not None
            assert past.current_version == len(records)
            assert session_view(past.view) == expected[version - 1]
            # As of the moment of event N: every event up to then, so also any event
            # recorded at the same instant after it.
            at = records[version - 1].occurred_at
            last = max(r.version for r in records if r.occurred_at <= at)
            as_of = state_at(history, "session", sid, as_of=at)
            assert as_of is not None
            assert session_view(as_of.view) == expected[last - 1]
        before = state_at(history, "session", sid, as_of=records[0].occurred_at - timedelta(1))
        assert before is not None
        assert (before.view, before.version) == (None, 0)
        assert state_at(history, "session", str(uuid.uuid4()), at_version=1) is None
        close_recorder(recorder)


def workflow_command(actor: str, name: str, command_id: str, payload: Any) -> Command:
    return Command(actor=actor, handler=HANDLERS[("workflow", name)],
                   envelope=Envelope(command_id=command_id, payload=payload))  # fmt: skip


def test_workflow_views_at_every_version_agree_with_the_engine_fold(
    recorder: Any, clock: FakeClock
) -> None:
    processor = Processor(recorder, clock=clock)
    wid = str(uuid.uuid4())
    steps = [
        ("start", StartWorkflow(workflow_id=wid, requirements="r", workflow_type="quick")),
        ("start_phase", StartPhase(workflow_id=wid, phase="implement")),
        ("report_progress", ReportProgress(workflow_id=wid, phase="implement", progress=40)),
        ("complete_phase", CompletePhase(workflow_id=wid, phase="implement", result={"ok": 1})),
        ("start_phase", StartPhase(workflow_id=wid, phase="test")),
        ("complete_phase", CompletePhase(workflow_id=wid, phase="test", result={"ok": 2})),
    ]
    for i, (name, payload) in enumerate(steps):
        clock.advance(minutes=5)
        reply = processor.handle_batch([workflow_command("ops", name, f"w{i}", payload)])[0]
        assert reply.status == "accepted", reply
    records = [decode_record(s) for s in recorder.select_events(uuid.UUID(wid))]
    state = WorkflowState(id=uuid.UUID(wid))
    history = History("", recorder=recorder)
    for record in records:
        state.apply(typed_event(record))
        past = state_at(history, "workflow", wid, at_version=record.version)
        assert past is not None
        view = past.view
        assert (view.status, view.version, view.progress) == (
            state.status, state.version, state.overall_progress,
        )  # fmt: skip
        assert view.current_phase == (
            state.phases[state.current].name if state.current is not None else None
        )
        assert view.phases_completed == [p.name for p in state.phases[: state.completed]]
        assert view.estimated_completion is None
    assert view.status == "completed"
    assert view.final_result == {"ok": 2}
