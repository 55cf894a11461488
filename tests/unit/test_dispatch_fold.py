"""Attempts of a workflow phase: assignment, acceptance, leases, lost leases, one result."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from chorus.contracts.tasks import AcceptTask
from chorus.contracts.workflow_types import Backoff, Phase, WorkflowType, WorkflowTypeRegistry
from chorus.contracts.workflows import (
    AssignPhase,
    AwaitAgent,
    CompletePhase,
    ExpireLease,
    ReportProgress,
    StartPhase,
    StartWorkflow,
)
from chorus.engine.domain import errors
from chorus.engine.domain.context import EngineContext
from chorus.engine.domain.workflow import (
    WorkflowState,
    decide_accept_task,
    decide_assign_phase,
    decide_await_agent,
    decide_complete_phase,
    decide_expire_lease,
    decide_report_progress,
    decide_start,
    decide_start_phase,
)
from chorus.events.workflow import PhaseAssigned, PhaseLeaseExpired, TaskAccepted

T0 = datetime(2030, 1, 1, 12, tzinfo=UTC)
WID = str(uuid.uuid4())
TYPE = WorkflowType(
    name="leased",
    phases=[
        Phase(name="build", lease_seconds=60, accept_seconds=10, heartbeat_seconds=20,
              max_attempts=2, backoff=Backoff(initial_seconds=5)),
        Phase(name="ship", capabilities=["deploy"]),
    ],
)  # fmt: skip
CTX = EngineContext(workflow_types=WorkflowTypeRegistry([TYPE]))


def run(state: WorkflowState, decide: Any, cmd: Any, actor: str, at: datetime) -> list[Any]:
    events = decide(state, cmd, actor, at, CTX)
    for event in events:
        state.apply(event)
    return events


def started() -> WorkflowState:
    state = WorkflowState(id=uuid.UUID(WID))
    run(state, decide_start, StartWorkflow(workflow_id=WID, requirements="r",
                                           workflow_type="leased"), "ops", T0)  # fmt: skip
    return state


def assign(state: WorkflowState, agent: str, attempt: int = 1, at: datetime = T0) -> list[Any]:
    cmd = AssignPhase(workflow_id=WID, phase="build", attempt=attempt, agent_id=agent)
    return run(state, decide_assign_phase, cmd, "system", at)


def test_an_assignment_records_the_attempt_and_its_lease() -> None:
    state = started()
    (event,) = assign(state, "a1")
    assert isinstance(event, PhaseAssigned)
    assert (event.attempt, event.agent_id) == (1, "a1")
    assert event.accept_by == T0 + timedelta(seconds=10)
    assert event.lease_expires_at == T0 + timedelta(seconds=60)
    assert state.attempt is not None and state.status == "queued"


def test_a_second_assignment_while_one_is_live_is_refused() -> None:
    state = started()
    assign(state, "a1")
    with pytest.raises(errors.NoChange):
        assign(state, "a2", attempt=2)
    with pytest.raises(errors.NoChange):
        assign(state, "a2", attempt=1)


def test_accepting_starts_the_phase_for_the_assignee_only() -> None:
    state = started()
    assign(state, "a1")
    with pytest.raises(errors.NotAssigned):
        run(state, decide_accept_task, AcceptTask(task_id=f"{WID}/build"), "a2", T0)
    events = run(state, decide_accept_task, AcceptTask(task_id=f"{WID}/build"), "a1", T0)
    assert [type(e).__name__ for e in events] == ["TaskAccepted", "PhaseStarted"]
    assert (state.status, state.assignee) == ("running", "a1")
    assert run(state, decide_accept_task, AcceptTask(task_id=f"{WID}/build"), "a1", T0) == []


def test_completing_an_unaccepted_attempt_accepts_it_first() -> None:
    state = started()
    assign(state, "a1")
    cmd = CompletePhase(workflow_id=WID, phase="build", result={"ok": 1})
    events = run(state, decide_complete_phase, cmd, "a1", T0)
    assert [type(e).__name__ for e in events] == ["TaskAccepted", "PhaseStarted", "PhaseCompleted"]
    assert state.results["build"] == {"ok": 1} and state.attempt is None


def test_a_lease_is_not_lost_before_it_is_due() -> None:
    state = started()
    assign(state, "a1")
    cmd = ExpireLease(workflow_id=WID, phase="build", attempt=1, reason="not_accepted")
    with pytest.raises(errors.NotDue):
        run(state, decide_expire_lease, cmd, "system", T0 + timedelta(seconds=9))


def test_an_unaccepted_attempt_loses_its_lease_and_the_late_report_is_lease_lost() -> None:
    state = started()
    assign(state, "a1")
    cmd = ExpireLease(workflow_id=WID, phase="build", attempt=1, reason="not_accepted")
    (expired,) = run(state, decide_expire_lease, cmd, "system", T0 + timedelta(seconds=10))
    assert isinstance(expired, PhaseLeaseExpired)
    assert (expired.reason, expired.retry_at) == ("not_accepted", T0 + timedelta(seconds=15))
    late = CompletePhase(workflow_id=WID, phase="build", result={"late": True})
    with pytest.raises(errors.LeaseLost) as raised:
        run(state, decide_complete_phase, late, "a1", T0 + timedelta(seconds=11))
    assert raised.value.code == "lease_lost"


def test_the_next_attempt_waits_for_the_backoff_then_goes_to_another_agent() -> None:
    state = started()
    assign(state, "a1")
    cmd = ExpireLease(workflow_id=WID, phase="build", attempt=1, reason="agent_offline")
    run(state, decide_expire_lease, cmd, "system", T0)
    with pytest.raises(errors.NotDue):
        assign(state, "a2", attempt=2, at=T0 + timedelta(seconds=4))
    assign(state, "a2", attempt=2, at=T0 + timedelta(seconds=5))
    done = CompletePhase(workflow_id=WID, phase="build", result={"by": "a2"})
    run(state, decide_complete_phase, done, "a2", T0 + timedelta(seconds=6))
    with pytest.raises(errors.LeaseLost):
        run(state, decide_complete_phase, done, "a1", T0 + timedelta(seconds=7))
    assert state.results == {"build": {"by": "a2"}}


def test_heartbeat_silence_loses_the_lease_and_progress_renews_it() -> None:
    state = started()
    assign(state, "a1")
    run(state, decide_accept_task, AcceptTask(task_id=f"{WID}/build"), "a1", T0)
    beat = ReportProgress(workflow_id=WID, phase="build", progress=10)
    run(state, decide_report_progress, beat, "a1", T0 + timedelta(seconds=15))
    cmd = ExpireLease(workflow_id=WID, phase="build", attempt=1, reason="heartbeat_silence")
    with pytest.raises(errors.NotDue):
        run(state, decide_expire_lease, cmd, "system", T0 + timedelta(seconds=34))
    (expired,) = run(state, decide_expire_lease, cmd, "system", T0 + timedelta(seconds=35))
    assert expired.reason == "heartbeat_silence"
    assert state.status == "queued" and state.current is None


def test_when_no_attempt_is_left_the_phase_fails_listing_every_attempt() -> None:
    state = started()
    for attempt, agent in ((1, "a1"), (2, "a2")):
        at = T0 + timedelta(minutes=5 * attempt)
        assign(state, agent, attempt=attempt, at=at)
        cmd = ExpireLease(workflow_id=WID, phase="build", attempt=attempt, reason="lease_expired")
        events = run(state, decide_expire_lease, cmd, "system", at + timedelta(seconds=60))
    assert [type(e).__name__ for e in events] == [
        "PhaseLeaseExpired", "PhaseFailed", "WorkflowFailed"]  # fmt: skip
    assert state.status == "failed"
    (error,) = state.errors
    assert error["code"] == "attempts_exhausted"
    assert [a["agent_id"] for a in error["attempts"]] == ["a1", "a2"]


def test_waiting_is_recorded_once_per_set_of_capabilities() -> None:
    state = started()
    cmd = AwaitAgent(workflow_id=WID, phase="build", attempt=1, capabilities=["gpu"])
    run(state, decide_await_agent, cmd, "system", T0)
    assert state.waiting == ["gpu"]
    with pytest.raises(errors.NoChange):
        run(state, decide_await_agent, cmd, "system", T0)
    assign(state, "a1")
    assert state.waiting is None


def test_the_starter_may_take_an_unaccepted_attempt_back_by_hand() -> None:
    state = started()
    assign(state, "a1")
    events = run(state, decide_start_phase, StartPhase(workflow_id=WID, phase="build",
                                                       assignee="me"), "ops", T0)  # fmt: skip
    assert [type(e).__name__ for e in events] == ["PhaseLeaseExpired", "PhaseStarted"]
    assert events[0].reason == "reassigned" and state.assignee == "me"
    with pytest.raises(errors.LeaseLost):
        run(state, decide_accept_task, AcceptTask(task_id=f"{WID}/build"), "a1", T0)


def test_another_agent_cannot_start_an_assigned_phase() -> None:
    state = started()
    assign(state, "a1")
    with pytest.raises(errors.NotAssigned):
        run(state, decide_start_phase, StartPhase(workflow_id=WID, phase="build"), "a2", T0)


def test_the_fold_replays_attempts_exactly() -> None:
    state = started()
    log: list[msgspec.Struct] = []
    log += assign(state, "a1")
    log += run(state, decide_expire_lease, ExpireLease(workflow_id=WID, phase="build", attempt=1,
               reason="agent_offline"), "system", T0)  # fmt: skip
    log += assign(state, "a2", attempt=2, at=T0 + timedelta(seconds=5))
    log += run(state, decide_accept_task, AcceptTask(task_id=f"{WID}/build"), "a2", T0)
    replay = started()
    for event in log:
        replay.apply(event)
    assert replay == state
    assert any(isinstance(e, TaskAccepted) for e in log)
