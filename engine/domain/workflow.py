"""The Workflow aggregate: phases run in order, each started, reported on and finished.

Like the session: ``WorkflowState.apply`` is the fold; the ``decide_*`` functions check
named rules and return events. Only the phase's assignee or the workflow's starter (the
operator, through the gateway) may report on a phase.

The dispatcher (engine/policies/dispatch.py) hands phases out in *attempts*: ``PhaseAssigned``
makes attempt N live; the assignee acknowledges it (``TaskAccepted``, which starts the
phase) and reports on it; a lost lease (``PhaseLeaseExpired``) ends it, and its agent's
later reports are rejected ``lease_lost``. At most one attempt of a phase is live, and
only the live attempt's result counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from chorus.contracts.tasks import AcceptTask, split_task_id
from chorus.contracts.workflow_types import Phase
from chorus.contracts.workflows import (
    AssignPhase,
    AwaitAgent,
    CancelWorkflow,
    CompletePhase,
    ExpireLease,
    FailPhase,
    PhaseError,
    RecordPartialResult,
    ReportProgress,
    StartPhase,
    StartWorkflow,
)
from chorus.engine.domain import errors
from chorus.engine.domain.context import EngineContext
from chorus.events.codec import GENESIS_HASH
from chorus.events.session import Routing
from chorus.events.workflow import (
    PartialResultRecorded,
    PhaseAssigned,
    PhaseCompleted,
    PhaseFailed,
    PhaseLeaseExpired,
    PhaseProgressReported,
    PhaseStarted,
    PhaseWaiting,
    TaskAccepted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)

AGGREGATE = "workflow"
FINISHED = frozenset({"completed", "failed", "cancelled"})
#: Who may act for the engine itself (the dispatcher, the delegation manager).
SYSTEM = "system"


@dataclass
class LiveAttempt:
    """The one attempt of the next phase that may run now, and its lease."""

    phase: str
    number: int
    agent_id: str
    assigned_at: datetime
    accept_by: datetime
    lease_expires_at: datetime
    heartbeat_seconds: int | None
    accepted: bool = False
    last_activity: datetime | None = None

    def due(self, now: datetime) -> str | None:
        """Why the lease is lost at ``now``, or None while it holds."""
        if not self.accepted and now >= self.accept_by:
            return "not_accepted"
        if now >= self.lease_expires_at:
            return "lease_expired"
        if self.accepted and self.heartbeat_seconds is not None:
            since = self.last_activity or self.assigned_at
            if now >= since + timedelta(seconds=self.heartbeat_seconds):
                return "heartbeat_silence"
        return None


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
    #: The live attempt of the next phase, if the dispatcher assigned one.
    attempt: LiveAttempt | None = None
    #: phase -> attempts made so far (assigned, or started by hand).
    attempts: dict[str, int] = field(default_factory=dict)
    #: phase -> agents whose attempt lost its lease (their reports are refused).
    lost: dict[str, set[str]] = field(default_factory=dict)
    #: phase -> the lost attempts, as listed in the phase's error if it fails.
    lost_attempts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: When the next attempt may be assigned (backoff after a lost lease).
    retry_at: datetime | None = None
    #: The capabilities the next phase waits for, when no agent qualified.
    waiting: list[str] | None = None

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
            case PhaseAssigned():
                self.attempt = LiveAttempt(
                    phase=event.phase, number=event.attempt, agent_id=event.agent_id,
                    assigned_at=event.assigned_at, accept_by=event.accept_by,
                    lease_expires_at=event.lease_expires_at,
                    heartbeat_seconds=event.heartbeat_seconds,
                )  # fmt: skip
                self.attempts[event.phase] = event.attempt
                self.retry_at = None
                self.waiting = None
            case PhaseWaiting():
                self.waiting = list(event.capabilities)
            case TaskAccepted():
                if self.attempt is not None and self.attempt.number == event.attempt:
                    self.attempt.accepted = True
                    self.attempt.last_activity = event.accepted_at
            case PhaseLeaseExpired():
                self.attempt = None
                self.lost.setdefault(event.phase, set()).add(event.agent_id)
                self.lost_attempts.setdefault(event.phase, []).append(
                    {"attempt": event.attempt, "agent_id": event.agent_id,
                     "reason": event.reason, "expired_at": event.expired_at.isoformat()}
                )  # fmt: skip
                self.retry_at = event.retry_at
                if self.current is not None:  # it had started: back to waiting
                    self.status = "queued"
                    self.current = None
                    self.assignee = None
                    self.progress = 0
            case PhaseStarted():
                self.status = "running"
                self.current = self.completed
                self.assignee = event.assignee
                self.progress = 0
                self.assignments[event.phase] = (event.assignee, event.started_at)
                self.waiting = None
                if self.attempt is None:  # started by hand: that is an attempt too
                    self.attempts[event.phase] = self.attempts.get(event.phase, 0) + 1
            case PhaseProgressReported():
                self.progress = event.progress
                self._touch(event.reported_at)
            case PartialResultRecorded():
                self.partial_results.setdefault(event.phase, []).append(event.result)
                self._touch(event.reported_at)
            case PhaseCompleted():
                self.results[event.phase] = event.result
                self.completed_at[event.phase] = event.completed_at
                self.completed += 1
                self.current = None
                self.assignee = None
                self.progress = 0
                self.attempt = None
            case PhaseFailed():
                error = {"phase": event.phase, **msgspec.to_builtins(event.error)}
                if event.attempts:
                    error["attempts"] = list(event.attempts)
                self.errors.append(error)
                self.attempt = None
            case WorkflowCompleted():
                self.status = "completed"
            case WorkflowFailed():
                self.status = "failed"
                self.current = None
                self.attempt = None
            case WorkflowCancelled():
                self.status = "cancelled"
                self.current = None
                self.attempt = None
            case _:
                raise TypeError(f"not a workflow event: {type(event).__name__}")
        self.version += 1

    def _touch(self, at: datetime | None) -> None:
        if self.attempt is not None and at is not None:
            self.attempt.last_activity = at

    @property
    def next_phase(self) -> Phase | None:
        """The phase to run next (or running), None when all are done."""
        return self.phases[self.completed] if self.completed < len(self.phases) else None

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

    def check_unassigned_next(self, phase: str) -> Phase:
        """``phase`` is the next one, and no attempt of it is live or running."""
        self.check_exists()
        self.check_not_finished()
        upcoming = self.next_phase
        if upcoming is None or upcoming.name != phase:
            raise errors.PhaseNotCurrent(f"{phase} is not the next phase of {self.id}")
        if self.current is not None or self.attempt is not None:
            raise errors.NoChange(f"{phase} of {self.id} already has a live attempt")
        return upcoming

    def check_lease_held(self, phase: str, actor: str) -> None:
        """An agent whose attempt of ``phase`` lost its lease no longer speaks for it."""
        holder = self.attempt.agent_id if self.attempt is not None else self.assignee
        if actor in self.lost.get(phase, ()) and actor != holder:
            raise errors.LeaseLost(
                f"{actor} lost the lease of {phase} in workflow {self.id}: the work moved on",
                {"phase": phase, "holder": holder},
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
    errors.check_client_id(state.id, actor, "payload.workflow_id")
    context = ctx or EngineContext()
    registry = context.registry()
    workflow_type = registry.get(cmd.workflow_type)
    if workflow_type is None:  # perhaps just defined by another engine worker
        registry = context.registry(refresh=True)
        workflow_type = registry.get(cmd.workflow_type)
    if workflow_type is None:
        known = [t.name for t in registry.all()]
        raise errors.UnknownWorkflowType(
            f"Unknown workflow type: {cmd.workflow_type}", {"known": known}
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
    """The assignee of a live attempt starts it (that acknowledges the task). The starter,
    an operator or the engine may also start the phase by hand, for ``assignee``: a live
    attempt not yet accepted is then taken back (``reassigned``)."""
    state.check_exists()
    state.check_not_finished()
    live = state.attempt
    if live is not None and live.phase == cmd.phase and not live.accepted:
        if actor == live.agent_id and cmd.assignee in (None, actor):
            return _accept(live, now)
        if not _may_assign_by_hand(state, actor, ctx):
            state.check_lease_held(cmd.phase, actor)
            raise errors.NotAssigned(
                f"phase {cmd.phase} of workflow {state.id} is assigned to {live.agent_id}",
                {"assignee": live.agent_id},
            )
        taken_back = _expired(state, live, "reassigned", now, retry_at=None)
        return [taken_back, *_start_by_hand(state, cmd, actor, now)]
    if _started_by_engine(state, cmd.phase):
        # The dispatcher already started this delegated phase: nothing to do, and nothing
        # granted (the engine stays its assignee).
        return []
    state.check_is_next_phase(cmd.phase)
    if not _may_assign_by_hand(state, actor, ctx):
        state.check_lease_held(cmd.phase, actor)
    return _start_by_hand(state, cmd, actor, now)


def _started_by_engine(state: WorkflowState, phase: str) -> bool:
    running = state.phases[state.current] if state.current is not None else None
    return (
        running is not None
        and running.name == phase
        and running.delegate is not None
        and state.assignee == SYSTEM
    )


def _may_assign_by_hand(state: WorkflowState, actor: str, ctx: EngineContext | None) -> bool:
    return actor in (state.started_by, SYSTEM) or (ctx is not None and ctx.is_operator(actor))


def _start_by_hand(
    state: WorkflowState, cmd: StartPhase, actor: str, now: datetime
) -> list[msgspec.Struct]:
    if state.phases[state.completed].delegate is not None:
        # A delegated phase is the engine's to finish (from its session's outcome), so no
        # agent can complete it by hand while the session runs.
        return [PhaseStarted(phase=cmd.phase, assignee=SYSTEM, started_at=now)]
    return [PhaseStarted(phase=cmd.phase, assignee=cmd.assignee or actor, started_at=now)]


def _accept(live: LiveAttempt, now: datetime) -> list[msgspec.Struct]:
    """The assignee acknowledges its attempt: the phase starts under its name."""
    return [
        TaskAccepted(phase=live.phase, attempt=live.number, agent_id=live.agent_id,
                     accepted_at=now),
        PhaseStarted(phase=live.phase, assignee=live.agent_id, started_at=now),
    ]  # fmt: skip


def decide_accept_task(
    state: WorkflowState,
    cmd: AcceptTask,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """``task.accept`` of ``<workflow_id>/<phase>``: only the live attempt's agent may;
    accepting again (or a phase it started by hand) records nothing."""
    _, phase = split_task_id(cmd.task_id)
    if not phase:
        raise errors.InvalidCommand("a phase task id reads <workflow_id>/<phase>",
                                    {"field": "payload.task_id"})  # fmt: skip
    state.check_exists()
    state.check_not_finished()
    live = state.attempt
    if live is not None and live.phase == phase and live.agent_id == actor:
        return [] if live.accepted else _accept(live, now)
    state.check_lease_held(phase, actor)
    running = state.phases[state.current].name if state.current is not None else None
    if running == phase and state.assignee == actor:
        return []
    raise errors.NotAssigned(
        f"{actor} is not assigned to {phase} of workflow {state.id}",
        {"assignee": live.agent_id if live is not None else state.assignee},
    )


def decide_assign_phase(
    state: WorkflowState,
    cmd: AssignPhase,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """The dispatcher's choice, checked: it names the next phase, nothing is live or
    running, the attempt is the next one and its backoff has passed."""
    phase = state.check_unassigned_next(cmd.phase)
    if phase.delegate is not None:
        raise errors.InvalidCommand(f"{cmd.phase} runs as a session, not on one agent")
    expected = state.attempts.get(cmd.phase, 0) + 1
    if cmd.attempt != expected:
        raise errors.NoChange(f"the next attempt of {cmd.phase} is {expected}",
                              {"attempt": expected})  # fmt: skip
    if state.retry_at is not None and now < state.retry_at:
        raise errors.NotDue(f"attempt {cmd.attempt} of {cmd.phase} is due at "
                            f"{state.retry_at.isoformat()}")  # fmt: skip
    routing = msgspec.convert(cmd.routing, Routing) if cmd.routing is not None else None
    accept = phase.accept_seconds or phase.lease_seconds
    return [
        PhaseAssigned(
            phase=cmd.phase, attempt=cmd.attempt, agent_id=cmd.agent_id, assigned_at=now,
            accept_by=now + timedelta(seconds=min(accept, phase.lease_seconds)),
            lease_expires_at=now + timedelta(seconds=phase.lease_seconds),
            heartbeat_seconds=phase.heartbeat_seconds, routing=routing,
        )
    ]  # fmt: skip


def decide_await_agent(
    state: WorkflowState,
    cmd: AwaitAgent,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """Record once that the next phase waits for an agent with ``capabilities``."""
    state.check_unassigned_next(cmd.phase)
    if state.waiting == sorted(cmd.capabilities):
        raise errors.NoChange(f"{cmd.phase} of {state.id} is already waiting")
    return [PhaseWaiting(phase=cmd.phase, attempt=cmd.attempt,
                         capabilities=sorted(cmd.capabilities))]  # fmt: skip


def decide_expire_lease(
    state: WorkflowState,
    cmd: ExpireLease,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """End a live attempt whose lease is lost (its timing is checked against ``now``; an
    offline agent is the dispatcher's word). A next attempt follows after the backoff, or,
    when none is left, the phase and the workflow fail with every attempt listed."""
    state.check_exists()
    state.check_not_finished()
    live = state.attempt
    if live is None or live.phase != cmd.phase or live.number != cmd.attempt:
        raise errors.NoChange(f"attempt {cmd.attempt} of {cmd.phase} is not live")
    reason: str | None = cmd.reason
    if cmd.reason == "reassigned":
        raise errors.InvalidCommand("an attempt is reassigned by starting the phase by hand")
    if cmd.reason != "agent_offline":
        reason = live.due(now)
        if reason is None:
            raise errors.NotDue(f"the lease of attempt {live.number} of {live.phase} holds")
    assert reason is not None
    phase = state.phases[state.completed]
    if live.number < phase.max_attempts:
        retry_at = now + timedelta(seconds=phase.backoff.delay(live.number))
        return [_expired(state, live, reason, now, retry_at)]
    expired = _expired(state, live, reason, now, retry_at=None)
    attempts = [*state.lost_attempts.get(live.phase, []), {
        "attempt": live.number, "agent_id": live.agent_id, "reason": reason,
        "expired_at": now.isoformat()}]  # fmt: skip
    error = PhaseError(
        code="attempts_exhausted",
        message=f"{live.phase}: all {len(attempts)} attempt(s) lost their lease",
    )
    return [
        expired,
        PhaseFailed(phase=live.phase, error=error, attempts=attempts),
        WorkflowFailed(phase=live.phase, error=error),
    ]


def _expired(
    state: WorkflowState, live: LiveAttempt, reason: str, now: datetime, retry_at: datetime | None
) -> PhaseLeaseExpired:
    return PhaseLeaseExpired(phase=live.phase, attempt=live.number, agent_id=live.agent_id,
                             reason=reason, expired_at=now, retry_at=retry_at)  # fmt: skip


def _acknowledged(
    state: WorkflowState, phase: str, actor: str, now: datetime
) -> list[msgspec.Struct]:
    """Reporting on a live attempt it has not accepted yet accepts it first (the work
    itself is the acknowledgement); otherwise nothing, after the usual checks."""
    live = state.attempt
    # A finished workflow has no live attempt: the fold ends it with the workflow.
    if live is not None and live.phase == phase and live.agent_id == actor and not live.accepted:
        return _accept(live, now)
    return []


def decide_report_progress(
    state: WorkflowState,
    cmd: ReportProgress,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """The same progress again is allowed: it is how an agent heartbeats its lease."""
    first = _acknowledged(state, cmd.phase, actor, now)
    if not first:
        _check_reporting(state, cmd.phase, actor, ctx)
        if cmd.progress < state.progress:
            raise errors.ProgressNotMonotonic(
                f"progress of {cmd.phase} is already {state.progress}",
                {"progress": state.progress},
            )
    return [*first, PhaseProgressReported(phase=cmd.phase, progress=cmd.progress,
                                          reported_at=now)]  # fmt: skip


def decide_record_partial_result(
    state: WorkflowState,
    cmd: RecordPartialResult,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    first = _acknowledged(state, cmd.phase, actor, now)
    if not first:
        _check_reporting(state, cmd.phase, actor, ctx)
    return [*first, PartialResultRecorded(phase=cmd.phase, result=cmd.result, reported_at=now)]


def decide_complete_phase(
    state: WorkflowState,
    cmd: CompletePhase,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """The last phase's result is the workflow's ``final_result``."""
    first = _acknowledged(state, cmd.phase, actor, now)
    if not first:
        _check_reporting(state, cmd.phase, actor, ctx)
    out: list[msgspec.Struct] = [
        *first,
        PhaseCompleted(phase=cmd.phase, result=cmd.result, completed_at=now),
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
    """A reported failure is the attempt's result: the phase and the workflow fail."""
    first = _acknowledged(state, cmd.phase, actor, now)
    if not first:
        _check_reporting(state, cmd.phase, actor, ctx)
    error = PhaseError(code=cmd.error.code, message=cmd.error.message)
    return [
        *first,
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
    state.check_not_finished()  # who may cancel: engine/domain/authz.py
    return [WorkflowCancelled(reason=cmd.reason, cancelled_by=actor)]


def _check_reporting(
    state: WorkflowState, phase: str, actor: str, ctx: EngineContext | None
) -> None:
    state.check_exists()
    state.check_not_finished()
    state.check_lease_held(phase, actor)
    state.check_is_current_phase(phase)
    state.check_may_report(actor, ctx)
