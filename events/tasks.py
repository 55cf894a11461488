"""Task messages built from recorded events: one builder for the inbox and the read model.

The dispatcher delivers these on ``chorus.task.<agent_id>`` and the ``agent_tasks`` read
model lists them (``GET /api/v1/agents/{id}/tasks``): both build them here, from the
typed events, so an agent sees the same task whichever way it asks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chorus.contracts.tasks import PhaseTask, SessionTask, phase_task_id
from chorus.events.session import SessionOpened
from chorus.events.workflow import PhaseAssigned, WorkflowStarted


def phase_task(
    workflow_id: str,
    started: WorkflowStarted,
    results: dict[str, dict[str, Any]],
    assigned: PhaseAssigned,
) -> PhaseTask:
    """``results``: the earlier phases' results in phase order."""
    return phase_task_of(
        workflow_id, started, results, phase=assigned.phase, attempt=assigned.attempt,
        lease_expires_at=assigned.lease_expires_at, heartbeat_seconds=assigned.heartbeat_seconds,
    )  # fmt: skip


def phase_task_of(
    workflow_id: str,
    started: WorkflowStarted,
    results: dict[str, dict[str, Any]],
    *,
    phase: str,
    attempt: int,
    lease_expires_at: datetime,
    heartbeat_seconds: int | None,
) -> PhaseTask:
    """The task of an attempt not recorded yet (the dispatcher's first delivery, sent
    before the log round trip) as well as of a recorded ``PhaseAssigned``."""
    requirements = started.requirements
    return PhaseTask(
        task_id=phase_task_id(workflow_id, phase),
        attempt=attempt,
        lease_expires_at=lease_expires_at,
        priority=started.priority,  # type: ignore[arg-type]
        workflow_id=workflow_id,
        workflow_type=started.workflow_type,
        phase=phase,
        description=f"{started.workflow_type}/{phase}: {requirements}",
        requirements=requirements,
        configuration=dict(started.configuration),
        inputs=dict(results),
        heartbeat_seconds=heartbeat_seconds,
    )


def session_task(
    session_id: str,
    opened: SessionOpened,
    priority: str = "normal",
    workflow_id: str | None = None,
    phase: str | None = None,
    inputs: dict[str, dict[str, Any]] | None = None,
) -> SessionTask:
    """A delegated phase's session names its workflow and phase, and carries the earlier
    phases' results."""
    return SessionTask(
        task_id=session_id,
        lease_expires_at=opened.deadline,
        priority=priority,  # type: ignore[arg-type]
        session_id=session_id,
        description=opened.task.description,
        criteria=opened.task.criteria,
        deadline=opened.deadline,
        inputs=dict(inputs or {}),
        workflow_id=workflow_id,
        phase=phase,
    )
