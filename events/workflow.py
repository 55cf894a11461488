"""Events of the Workflow aggregate."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from msgspec import Struct

from contracts.workflow_types import Phase, WorkflowType
from contracts.workflows import PhaseError


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


class PartialResultRecorded(Struct, kw_only=True, frozen=True):
    phase: str
    result: dict[str, Any]


class PhaseCompleted(Struct, kw_only=True, frozen=True):
    phase: str
    result: dict[str, Any]
    #: When the engine recorded it: a completion claim cannot be later than this.
    completed_at: datetime | None = None


class PhaseFailed(Struct, kw_only=True, frozen=True):
    phase: str
    error: PhaseError


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


WORKFLOW_EVENTS: dict[str, type[Struct]] = {
    cls.__name__: cls
    for cls in (
        WorkflowStarted,
        PhaseStarted,
        PhaseProgressReported,
        PartialResultRecorded,
        PhaseCompleted,
        PhaseFailed,
        WorkflowCompleted,
        WorkflowFailed,
        WorkflowCancelled,
    )
}

REGISTRY_EVENTS: dict[str, type[Struct]] = {"WorkflowTypeDefined": WorkflowTypeDefined}
