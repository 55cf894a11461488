"""Command payloads for workflows (``chorus.cmd.<actor>.workflow.<command>``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from chorus.contracts.sessions import Cancellation, Id, SessionId
from msgspec import Meta, Struct

WorkflowId = SessionId  # a UUID chosen by the starter
Priority = Literal["low", "normal", "high", "critical"]
PRIORITIES: tuple[str, ...] = get_args(Priority)
PhaseName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")]
Progress = Annotated[int, Meta(ge=0, le=100)]


class WorkflowRequest(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Start a workflow of a defined type: what the caller chooses (the HTTP body); the
    bus command ``StartWorkflow`` adds the workflow's id."""

    requirements: Annotated[str, Meta(min_length=1, max_length=100_000)]
    workflow_type: Annotated[str, Meta(min_length=1, max_length=64)]
    configuration: dict[str, Any] = {}
    priority: Priority = "normal"


class StartWorkflow(WorkflowRequest, kw_only=True, frozen=True, forbid_unknown_fields=True):
    workflow_id: WorkflowId


class StartPhase(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Start the next phase; it is assigned to ``assignee`` (default: the actor)."""

    workflow_id: WorkflowId
    phase: PhaseName
    assignee: Id | None = None


class ReportProgress(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    workflow_id: WorkflowId
    phase: PhaseName
    progress: Progress


class RecordPartialResult(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    workflow_id: WorkflowId
    phase: PhaseName
    result: dict[str, Any]


class CompletePhase(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    workflow_id: WorkflowId
    phase: PhaseName
    result: dict[str, Any] = {}


class PhaseError(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    code: Annotated[str, Meta(min_length=1, max_length=100)]
    message: Annotated[str, Meta(min_length=1, max_length=10_000)]


class FailPhase(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    workflow_id: WorkflowId
    phase: PhaseName
    error: PhaseError


class CancelWorkflow(Cancellation, kw_only=True, frozen=True, forbid_unknown_fields=True):
    workflow_id: WorkflowId


class AssignPhase(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Issued by the engine's dispatcher: give attempt ``attempt`` of the next phase to
    ``agent_id``. ``routing`` is the ranking it chose by (recorded as is)."""

    workflow_id: WorkflowId
    phase: PhaseName
    attempt: Annotated[int, Meta(ge=1)]
    agent_id: Id
    routing: dict[str, Any] | None = None


class AwaitAgent(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Issued by the dispatcher: no agent qualifies for the next phase yet."""

    workflow_id: WorkflowId
    phase: PhaseName
    attempt: Annotated[int, Meta(ge=1)]
    capabilities: list[str] = []


LeaseReason = Literal[
    "not_accepted", "lease_expired", "heartbeat_silence", "agent_offline", "reassigned"
]


class ExpireLease(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Issued by the dispatcher when a live attempt's lease is lost."""

    workflow_id: WorkflowId
    phase: PhaseName
    attempt: Annotated[int, Meta(ge=1)]
    reason: LeaseReason


WORKFLOW_COMMANDS: dict[str, type[Struct]] = {
    "start": StartWorkflow,
    "start_phase": StartPhase,
    "report_progress": ReportProgress,
    "record_partial_result": RecordPartialResult,
    "complete_phase": CompletePhase,
    "fail_phase": FailPhase,
    "cancel": CancelWorkflow,
    "assign_phase": AssignPhase,
    "await_agent": AwaitAgent,
    "expire_lease": ExpireLease,
}
