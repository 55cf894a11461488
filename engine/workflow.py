"""The Workflow aggregate: phases run in order, each started, reported on and finished.

Like the session: ``WorkflowState.apply`` is the fold; the ``decide_*`` functions check
named rules and return events. Only the phase's assignee or the workflow's starter (the
operator, through the gateway) may report on a phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from contracts.workflow_types import Phase
from contracts.workflows import (
    CancelWorkflow,
    CompletePhase,
    FailPhase,
    PhaseError,
    RecordPartialResult,
    ReportProgress,
    StartPhase,
    StartWorkflow,
)
from engine import errors
from engine.context import EngineContext
from events.codec import GENESIS_HASH
from events.workflow import (
    PartialResultRecorded,
    PhaseCompleted,
    PhaseFailed,
    PhaseProgressReported,
    PhaseStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)

AGGREGATE = "workflow"
FINISHED = frozenset({"completed", "failed", "cancelled"})


@dataclass
class WorkflowState:
    id: UUID
    version: int = 0
    last_hash: str = GENESIS_HASH
    status: str = "new"  # queued | running | completed | failed | cancelled
    workflow_type: str = ""
    phases: tuple[Phase, ...] = ()
    priority: str = "normal"
    started_by: str = ""
    current: int | None = None  # index of the running phase
    completed: int = 0  # phases completed (they complete in order)
    assignee: str | None = None
    progress: int = 0  # of the running phase
    partial_results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: phase -> (assignee, started at): who held each phase, for completion evidence.
    assignments: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)
    completed_at: dict[str, datetime | None] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def overall_progress(self) -> int:
        """Completed phases count whole; the running one by its reported progress."""
        if not self.phases:
            return 0
        if self.status == "completed":
            return 100
        running = self.progress if self.current is not None else 0
        return (self.completed * 100 + running) // len(self.phases)

    def apply(self, event: msgspec.Struct) -> None:
        match event:
            case WorkflowStarted():
                self.status = "queued"
                self.workflow_type = event.workflow_type
                self.phases = tuple(event.phases)
                self.priority = event.priority
                self.started_by = event.started_by
            case PhaseStarted():
                self.status = "running"
                self.current = self.completed
                self.assignee = event.assignee
                self.progress = 0
                self.assignments[event.phase] = (event.assignee, event.started_at)
            case PhaseProgressReported():
                self.progress = event.progress
            case PartialResultRecorded():
                self.partial_results.setdefault(event.phase, []).append(event.result)
            case PhaseCompleted():
                self.results[event.phase] = event.result
                self.completed_at[event.phase] = event.completed_at
                self.completed += 1
                self.current = None
                self.assignee = None
                self.progress = 0
            case PhaseFailed():
                self.errors.append({"phase": event.phase, **msgspec.to_builtins(event.error)})
            case WorkflowCompleted():
                self.status = "completed"
            case WorkflowFailed():
                self.status = "failed"
                self.current = None
            case WorkflowCancelled():
                self.status = "cancelled"
                self.current = None
            case _:
                raise TypeError(f"not a workflow event: {type(event).__name__}")
        self.version += 1

    # Named checks -------------------------------------------------------------------------

    def check_exists(self) -> None:
        if not self.exists:
            raise errors.WorkflowNotFound(f"workflow {self.id} does not exist")

    def check_not_finished(self) -> None:
        if self.status in FINISHED:
            raise errors.WorkflowClosed(
                f"workflow {self.id} is {self.status}", {"status": self.status}
            )

    def check_is_next_phase(self, phase: str) -> None:
        if self.current is not None:
            raise errors.PhaseNotCurrent(
                f"phase {self.phases[self.current].name} is still running",
                {"current_phase": self.phases[self.current].name},
            )
        expected = self.phases[self.completed].name
        if phase != expected:
            raise errors.PhaseNotCurrent(
                f"the next phase is {expected}, not {phase}", {"expected_phase": expected}
            )

    def check_is_current_phase(self, phase: str) -> None:
        current = self.phases[self.current].name if self.current is not None else None
        if phase != current:
            raise errors.PhaseNotCurrent(
                f"phase {phase} is not running"
                + (f" (the current phase is {current})" if current else " (no phase is running)"),
                {"current_phase": current},
            )

    def check_may_report(self, actor: str, ctx: EngineContext | None = None) -> None:
        # "system" is the engine itself (the delegation manager); no bus client can be it.
        if actor in (self.assignee, self.started_by, "system"):
            return
        if ctx is not None and ctx.is_operator(actor):
            return
        raise errors.NotAssigned(
            f"{actor} is not assigned to the current phase of workflow {self.id}",
            {"assignee": self.assignee},
        )


# Decisions ----------------------------------------------------------------------------------


def decide_start(
    state: WorkflowState,
    cmd: StartWorkflow,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    if state.exists:
        raise errors.WorkflowExists(f"workflow {state.id} already exists")
    context = ctx or EngineContext()
    registry = context.registry()
    workflow_type = registry.get(cmd.workflow_type)
    if workflow_type is None:  # perhaps just defined by another engine worker
        registry = context.registry(refresh=True)
        workflow_type = registry.get(cmd.workflow_type)
    if workflow_type is None:
        known = [t.name for t in registry.all()]
        raise errors.UnknownWorkflowType(
            f"unknown workflow type {cmd.workflow_type!r}", {"known": known}
        )
    return [
        WorkflowStarted(
            workflow_id=str(state.id),
            workflow_type=workflow_type.name,
            phases=list(workflow_type.phases),
            requirements=cmd.requirements,
            configuration=cmd.configuration,
            priority=cmd.priority,
            started_by=actor,
        )
    ]


def decide_start_phase(
    state: WorkflowState,
    cmd: StartPhase,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists()
    state.check_not_finished()
    state.check_is_next_phase(cmd.phase)
    if state.phases[state.completed].delegate is not None:
        # A delegated phase is the engine's to finish (from its session's outcome), so no
        # agent can complete it by hand while the session runs.
        return [PhaseStarted(phase=cmd.phase, assignee="system", started_at=now)]
    return [PhaseStarted(phase=cmd.phase, assignee=cmd.assignee or actor, started_at=now)]


def decide_report_progress(
    state: WorkflowState,
    cmd: ReportProgress,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    _check_reporting(state, cmd.phase, actor, ctx)
    if cmd.progress < state.progress:
        raise errors.ProgressNotMonotonic(
            f"progress of {cmd.phase} is already {state.progress}", {"progress": state.progress}
        )
    return [PhaseProgressReported(phase=cmd.phase, progress=cmd.progress)]


def decide_record_partial_result(
    state: WorkflowState,
    cmd: RecordPartialResult,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    _check_reporting(state, cmd.phase, actor, ctx)
    return [PartialResultRecorded(phase=cmd.phase, result=cmd.result)]


def decide_complete_phase(
    state: WorkflowState,
    cmd: CompletePhase,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    _check_reporting(state, cmd.phase, actor, ctx)
    out: list[msgspec.Struct] = [
        PhaseCompleted(phase=cmd.phase, result=cmd.result, completed_at=now)
    ]
    if state.completed + 1 == len(state.phases):
        out.append(WorkflowCompleted(final_result=cmd.result))
    return out


def decide_fail_phase(
    state: WorkflowState,
    cmd: FailPhase,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    _check_reporting(state, cmd.phase, actor, ctx)
    error = PhaseError(code=cmd.error.code, message=cmd.error.message)
    return [
        PhaseFailed(phase=cmd.phase, error=error),
        WorkflowFailed(phase=cmd.phase, error=error),
    ]


def decide_cancel(
    state: WorkflowState,
    cmd: CancelWorkflow,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists()
    state.check_not_finished()
    if actor != state.started_by:
        raise errors.NotAuthorized(f"only the starter may cancel workflow {state.id}")
    return [WorkflowCancelled(reason=cmd.reason, cancelled_by=actor)]


def _check_reporting(
    state: WorkflowState, phase: str, actor: str, ctx: EngineContext | None
) -> None:
    state.check_exists()
    state.check_not_finished()
    state.check_is_current_phase(phase)
    state.check_may_report(actor, ctx)
