"""Task messages built from recorded events: one builder for the inbox and the read model.

The dispatcher delivers these on ``chorus.task.<agent_id>`` and the ``agent_tasks`` read
model lists them (``GET /api/v1/agents/{id}/tasks``): both build them here, from the
events' stored data, so an agent sees the same task whichever way it asks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from chorus.contracts.sessions import Criteria
from chorus.contracts.tasks import PhaseTask, SessionTask, phase_task_id


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def phase_task(
    workflow_id: str,
    started: dict[str, Any],
    results: dict[str, dict[str, Any]],
    assigned: dict[str, Any],
) -> PhaseTask:
    """``started``: the ``WorkflowStarted`` data; ``results``: the earlier phases' results
    in phase order; ``assigned``: the ``PhaseAssigned`` data."""
    phase = assigned["phase"]
    requirements = started["requirements"]
    return PhaseTask(
        task_id=phase_task_id(workflow_id, phase),
        attempt=assigned["attempt"],
        lease_expires_at=_time(assigned["lease_expires_at"]),
        priority=started["priority"],
        workflow_id=workflow_id,
        workflow_type=started["workflow_type"],
        phase=phase,
        description=f"{started['workflow_type']}/{phase}: {requirements}",
        requirements=requirements,
        configuration=dict(started["configuration"]),
        inputs=dict(results),
        heartbeat_seconds=assigned.get("heartbeat_seconds"),
    )


def session_task(
    session_id: str,
    opened: dict[str, Any],
    priority: str = "normal",
    workflow_id: str | None = None,
    phase: str | None = None,
    inputs: dict[str, dict[str, Any]] | None = None,
) -> SessionTask:
    """``opened``: the ``SessionOpened`` data; a delegated phase's session names its
    workflow and phase, and carries the earlier phases' results."""
    task = opened["task"]
    deadline = _time(opened["deadline"])
    return SessionTask(
        task_id=session_id,
        lease_expires_at=deadline,
        priority=priority,  # type: ignore[arg-type]
        session_id=session_id,
        description=task["description"],
        criteria=msgspec.convert(task.get("criteria", {}), Criteria),
        deadline=deadline,
        inputs=dict(inputs or {}),
        workflow_id=workflow_id,
        phase=phase,
    )
