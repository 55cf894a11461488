"""The Workflow aggregate: phases in order, reports only by the assignee, a replayable fold."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from chorus.contracts.workflows import (
    CancelWorkflow,
    CompletePhase,
    FailPhase,
    PhaseError,
    RecordPartialResult,
    ReportProgress,
    StartPhase,
    StartWorkflow,
)
from chorus.engine.domain import errors
from chorus.engine.domain.workflow import (
    WorkflowState,
    decide_cancel,
    decide_complete_phase,
    decide_fail_phase,
    decide_record_partial_result,
    decide_report_progress,
    decide_start,
    decide_start_phase,
)
from hypothesis import given, settings
from hypothesis import strategies as st

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
WID = str(uuid.uuid4())


def run(state: WorkflowState, decide: Any, cmd: Any, actor: str) -> list[msgspec.Struct]:
    events = decide(state, cmd, actor, NOW)
    for event in events:
        state.apply(event)
    return events


def started(workflow_type: str = "quick") -> WorkflowState:
    state = WorkflowState(id=uuid.UUID(WID))
    run(
        state,
        decide_start,
        StartWorkflow(workflow_id=WID, requirements="do it", workflow_type=workflow_type),
        "ops",
    )
    return state


def test_a_started_workflow_is_queued_with_its_types_phases() -> None:
    state = started("full")
    assert state.status == "queued"
    assert [p.name for p in state.phases] == [
        "requirements",
        "design",
        "implement",
        "test",
        "review",
    ]
    assert state.overall_progress == 0


def test_an_unknown_workflow_type_is_rejected_naming_the_known_ones() -> None:
    state = WorkflowState(id=uuid.UUID(WID))
    with pytest.raises(errors.UnknownWorkflowType) as raised:
        decide_start(
            state,
            StartWorkflow(workflow_id=WID, requirements="x", workflow_type="nope"),
            "ops",
            NOW,
        )
    assert raised.value.details is not None
    assert "full" in raised.value.details["known"]


def test_phases_run_in_order_and_the_last_completion_completes_the_workflow() -> None:
    state = started("quick")
    with pytest.raises(errors.PhaseNotCurrent):
        decide_start_phase(state, StartPhase(workflow_id=WID, phase="test"), "agent-1", NOW)
    run(state, decide_start_phase, StartPhase(workflow_id=WID, phase="implement"), "agent-1")
    assert state.status == "running"
    run(
        state,
        decide_report_progress,
        ReportProgress(workflow_id=WID, phase="implement", progress=50),
        "agent-1",
    )
    assert state.overall_progress == 25
    run(
        state,
        decide_complete_phase,
        CompletePhase(workflow_id=WID, phase="implement", result={"pr": 1}),
        "agent-1",
    )
    assert state.overall_progress == 50
    run(
        state,
        decide_start_phase,
        StartPhase(workflow_id=WID, phase="test", assignee="agent-2"),
        "ops",
    )
    events = run(
        state,
        decide_complete_phase,
        CompletePhase(workflow_id=WID, phase="test", result={"ok": True}),
        "agent-2",
    )
    assert [type(e).__name__ for e in events] == ["PhaseCompleted", "WorkflowCompleted"]
    assert state.status == "completed"
    assert state.overall_progress == 100
    with pytest.raises(errors.WorkflowClosed):
        decide_cancel(state, CancelWorkflow(workflow_id=WID), "ops", NOW)


def test_progress_never_goes_back() -> None:
    state = started()
    run(state, decide_start_phase, StartPhase(workflow_id=WID, phase="implement"), "agent-1")
    run(
        state,
        decide_report_progress,
        ReportProgress(workflow_id=WID, phase="implement", progress=60),
        "agent-1",
    )
    with pytest.raises(errors.ProgressNotMonotonic):
        decide_report_progress(
            state, ReportProgress(workflow_id=WID, phase="implement", progress=59), "agent-1", NOW
        )


def test_a_report_for_a_phase_that_is_not_running_is_rejected() -> None:
    state = started()
    with pytest.raises(errors.PhaseNotCurrent, match="no phase is running"):
        decide_report_progress(
            state, ReportProgress(workflow_id=WID, phase="implement", progress=1), "ops", NOW
        )


def test_a_failed_phase_fails_the_workflow_with_its_error() -> None:
    state = started()
    run(state, decide_start_phase, StartPhase(workflow_id=WID, phase="implement"), "agent-1")
    error = PhaseError(code="build_broken", message="tests do not compile")
    events = run(
        state,
        decide_fail_phase,
        FailPhase(workflow_id=WID, phase="implement", error=error),
        "agent-1",
    )
    assert [type(e).__name__ for e in events] == ["PhaseFailed", "WorkflowFailed"]
    assert state.status == "failed"
    assert state.errors == [
        {"phase": "implement", "code": "build_broken", "message": "tests do not compile"}
    ]


def test_a_workflow_is_cancelled_with_its_reason() -> None:
    state = started()
    run(state, decide_cancel, CancelWorkflow(workflow_id=WID, reason="not needed"), "ops")
    assert state.status == "cancelled"


ACTORS = st.sampled_from(["ops", "agent-1", "agent-2"])
PHASES = st.sampled_from(["requirements", "design", "implement", "test", "review", "nope"])
COMMANDS = st.one_of(
    st.tuples(
        st.just(decide_start_phase),
        st.builds(StartPhase, workflow_id=st.just(WID), phase=PHASES),
        ACTORS,
    ),
    st.tuples(
        st.just(decide_report_progress),
        st.builds(
            ReportProgress, workflow_id=st.just(WID), phase=PHASES, progress=st.integers(0, 100)
        ),
        ACTORS,
    ),
    st.tuples(
        st.just(decide_record_partial_result),
        st.builds(
            RecordPartialResult, workflow_id=st.just(WID), phase=PHASES, result=st.just({"n": 1})
        ),
        ACTORS,
    ),
    st.tuples(
        st.just(decide_complete_phase),
        st.builds(CompletePhase, workflow_id=st.just(WID), phase=PHASES),
        ACTORS,
    ),
    st.tuples(
        st.just(decide_fail_phase),
        st.builds(
            FailPhase,
            workflow_id=st.just(WID),
            phase=PHASES,
            error=st.just(PhaseError(code="x", message="y")),
        ),
        ACTORS,
    ),
    st.tuples(st.just(decide_cancel), st.builds(CancelWorkflow, workflow_id=st.just(WID)), ACTORS),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(COMMANDS, max_size=40))
def test_progress_is_monotonic_and_replay_reproduces_the_state(commands: list[Any]) -> None:
    state = started("full")
    recorded: list[msgspec.Struct] = []
    last_progress = 0
    for decide, cmd, actor in commands:
        try:
            events = decide(state, cmd, actor, NOW)
        except errors.DomainError:
            continue
        for event in events:
            state.apply(event)
        recorded.extend(events)
        assert state.overall_progress >= last_progress or state.status in ("failed", "cancelled")
        last_progress = state.overall_progress
    replayed = WorkflowState(id=uuid.UUID(WID))
    replayed.apply(
        decide_start(
            WorkflowState(id=uuid.UUID(WID)),
            StartWorkflow(workflow_id=WID, requirements="do it", workflow_type="full"),
            "ops",
            NOW,
        )[0]
    )
    for event in recorded:
        replayed.apply(event)
    assert dataclasses.asdict(replayed) == dataclasses.asdict(state)
