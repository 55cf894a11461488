"""The agent's inbox: the task messages the engine delivers on ``chorus.task.<agent_id>``.

Work flows to agents here. Every assignment (a workflow phase chosen by the dispatcher, a
session participant named, routed or replacing a lost one) is recorded as an event first,
then delivered as one of these JSON messages, again and again until the agent
acknowledges it: with ``chorus.cmd.<agent>.task.accept {"task_id"}``, or by doing the work
(``workflow.start_phase``, ``workflow.report_progress``, ``workflow.complete_phase``,
``session.submit_result``). A plain core-NATS subscription on the inbox is all an agent
needs: no SDK, no JetStream rights. Delivery is at least once, so an agent must treat a
repeat of a ``(task_id, attempt)`` it already holds as the same task.

``kind`` tells the three messages apart (a tagged union, decoded once with
``TASK_DECODER``):

- ``phase``: run one phase of a workflow. ``inputs`` holds the results of the earlier
  phases (phase name -> result); ``lease_expires_at`` bounds the attempt: after it (or
  after ``heartbeat_seconds`` without a progress report, or when the agent goes offline)
  the engine records ``PhaseLeaseExpired``, gives the phase to another agent, and rejects
  this attempt's later reports with ``lease_lost``.
- ``session``: take part in a coordination session: submit a result before ``deadline``.
- ``cancel``: the work was cancelled (or its lease was lost): stop; reports are rejected.

``task_id`` is the id completion evidence uses: the session id, or
``<workflow_id>/<phase>``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from chorus.contracts.agents import TaskId
from chorus.contracts.sessions import Criteria
from chorus.contracts.workflows import Priority
from msgspec import Meta, Struct

Attempt = Annotated[int, Meta(ge=1)]


class PhaseTask(Struct, kw_only=True, frozen=True, tag_field="kind", tag="phase"):
    """Run ``phase`` of ``workflow_id``: report on it with the ``workflow.*`` commands."""

    task_id: TaskId
    attempt: Attempt
    lease_expires_at: datetime
    priority: Priority
    workflow_id: str
    workflow_type: str
    phase: str
    #: ``<workflow_type>/<phase>: <requirements>``, for agents that read one text.
    description: str
    requirements: str
    configuration: dict[str, Any] = {}
    #: Results of the workflow's earlier phases, by phase name, in phase order.
    inputs: dict[str, dict[str, Any]] = {}
    #: Report progress at least this often (seconds) or lose the lease; None: no limit.
    heartbeat_seconds: int | None = None
    criteria: Criteria | None = None
    deadline: datetime | None = None
    session_id: str | None = None


class SessionTask(Struct, kw_only=True, frozen=True, tag_field="kind", tag="session"):
    """Take part in ``session_id``: submit one result with ``session.submit_result``.

    ``lease_expires_at`` equals the session's ``deadline``; ``workflow_id`` and ``phase``
    are set when the session runs a delegated workflow phase.
    """

    task_id: TaskId
    attempt: Attempt = 1
    lease_expires_at: datetime
    priority: Priority = "normal"
    session_id: str
    description: str
    criteria: Criteria
    deadline: datetime
    configuration: dict[str, Any] = {}
    inputs: dict[str, dict[str, Any]] = {}
    workflow_id: str | None = None
    phase: str | None = None


class CancelTask(Struct, kw_only=True, frozen=True, tag_field="kind", tag="cancel"):
    """Stop working on ``task_id``: it was cancelled, finished without you, or your lease
    was lost. ``attempt`` names the attempt it ends when there is one."""

    task_id: TaskId
    reason: str
    attempt: int | None = None


TaskMessage = PhaseTask | SessionTask | CancelTask
TaskKind = Literal["session", "phase", "cancel"]

#: Decodes any inbox message (``kind`` selects the type).
TASK_DECODER: msgspec.json.Decoder[TaskMessage] = msgspec.json.Decoder(TaskMessage)
TASK_ENCODER = msgspec.json.Encoder()


class AcceptTask(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``chorus.cmd.<agent>.task.accept``: the agent holds ``task_id`` (stop re-sending).

    Only the task's current assignee may accept it (else ``not_assigned``; a lost lease
    answers ``lease_lost``). Accepting twice is harmless. Accepting a phase starts it, as
    ``workflow.start_phase`` does.
    """

    task_id: TaskId


TASK_COMMANDS: dict[str, type[Struct]] = {"accept": AcceptTask}


def split_task_id(task_id: str) -> tuple[str, str | None]:
    """``<workflow_id>/<phase>`` -> (workflow_id, phase); a session id -> (id, None)."""
    owner, slash, phase = task_id.partition("/")
    return owner, (phase if slash else None)


def phase_task_id(workflow_id: str, phase: str) -> str:
    return f"{workflow_id}/{phase}"
