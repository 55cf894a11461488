"""Events of the Workflow aggregate."""

from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

from chorus.contracts.workflow_types import Phase, WorkflowType
from chorus.contracts.workflows import PhaseError
from chorus.events.session import Routing
from msgspec import Struct


class WorkflowStarted(Struct, kw_only=True, frozen=True):
    """The type's phases are copied in: a later change of the type never rewrites history."""

    workflow_id: str
    workflow_type: str
    phases: list[Phase]
    requirements: str
    configuration: dict[str, Any]
    priority: str
    started_by: str


class PhaseStarted(Struct, kw_only=True, frozen=True):
    phase: str
    assignee: str
    #: When the assignee got the phase (for checking completion evidence).
    started_at: datetime | None = None


class PhaseProgressReported(Struct, kw_only=True, frozen=True):
    phase: str
    progress: int
    #: When the engine recorded it: a sign of life that renews a heartbeat lease.
    reported_at: datetime | None = None


class PartialResultRecorded(Struct, kw_only=True, frozen=True):
    phase: str
    result: dict[str, Any]
    reported_at: datetime | None = None


class PhaseAssigned(Struct, kw_only=True, frozen=True):
    """The dispatcher gave attempt ``attempt`` of ``phase`` to ``agent_id``: the candidates
    it ranked and their scores are kept, as ``SessionOpened.routing`` keeps them.

    The attempt must be accepted by ``accept_by`` and finished by ``lease_expires_at``; with
    ``heartbeat_seconds`` it must also report at least that often, or the lease is lost.
    """

    phase: str
    attempt: int
    agent_id: str
    assigned_at: datetime
    accept_by: datetime
    lease_expires_at: datetime
    heartbeat_seconds: int | None = None
    routing: Routing | None = None


class PhaseWaiting(Struct, kw_only=True, frozen=True):
    """No online agent with ``capabilities`` and a free slot: the phase waits for one."""

    phase: str
    attempt: int
    capabilities: list[str]
    reason: str = "waiting_for_agent"


class TaskAccepted(Struct, kw_only=True, frozen=True):
    """The assignee acknowledged its task (``task.accept``, or by starting the work):
    the engine stops re-sending it."""

    phase: str
    attempt: int
    agent_id: str
    accepted_at: datetime


class PhaseLeaseExpired(Struct, kw_only=True, frozen=True):
    """Attempt ``attempt`` lost its lease: ``reason`` is ``not_accepted``,
    ``lease_expired``, ``heartbeat_silence``, ``agent_offline`` or ``reassigned``.

    The agent's later reports are rejected ``lease_lost``. ``retry_at`` is when the next
    attempt may be assigned; None when no attempt is left (the phase fails with it).
    """

    phase: str
    attempt: int
    agent_id: str
    reason: str
    expired_at: datetime
    retry_at: datetime | None = None


class PhaseCompleted(Struct, kw_only=True, frozen=True):
    phase: str
    result: dict[str, Any]
    #: When the engine recorded it: a completion claim cannot be later than this.
    completed_at: datetime | None = None


class PhaseFailed(Struct, kw_only=True, frozen=True):
    phase: str
    error: PhaseError
    #: Every attempt that lost its lease before the phase failed (agent, reason, when).
    attempts: list[dict[str, Any]] = []


class WorkflowCompleted(Struct, kw_only=True, frozen=True):
    final_result: dict[str, Any]


class WorkflowFailed(Struct, kw_only=True, frozen=True):
    phase: str
    error: PhaseError


class WorkflowCancelled(Struct, kw_only=True, frozen=True):
    reason: str
    cancelled_by: str


class WorkflowTypeDefined(Struct, kw_only=True, frozen=True):
    workflow_type: WorkflowType
    defined_by: str


#: Every event of the Workflow aggregate: a union tagged by the record's ``type`` (the class name).
WorkflowEvent = (
    WorkflowStarted
    | PhaseStarted
    | PhaseAssigned
    | PhaseWaiting
    | TaskAccepted
    | PhaseLeaseExpired
    | PhaseProgressReported
    | PartialResultRecorded
    | PhaseCompleted
    | PhaseFailed
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowCancelled
)
WORKFLOW_EVENTS: dict[str, type[Struct]] = {cls.__name__: cls for cls in get_args(WorkflowEvent)}

REGISTRY_EVENTS: dict[str, type[Struct]] = {"WorkflowTypeDefined": WorkflowTypeDefined}
