"""The ``agent_tasks`` read model: every agent's open tasks, as its inbox delivers them.

The pull fallback of the inbox (``GET /api/v1/agents/{id}/tasks``): an agent that cannot
keep a subscription, or just restarted, reads what it holds. A phase task is open from
``PhaseAssigned`` until the phase completes or fails, its lease is lost or the workflow
ends; a session task from the session's opening (or a replacement) until the participant
submits or the session closes. Rows hold the task message built by ``chorus.events.tasks``, the
same builder the dispatcher delivers with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from chorus.contracts.feed import EventRecord
from chorus.contracts.tasks import TASK_ENCODER, PhaseTask, SessionTask, phase_task_id
from chorus.events.session import (
    ParticipantReplaced,
    ResultSubmitted,
    SessionCancelled,
    SessionFinalised,
    SessionOpened,
    SessionTimedOut,
)
from chorus.events.session import TaskAccepted as SessionTaskAccepted
from chorus.events.tasks import phase_task, session_task
from chorus.events.workflow import (
    PhaseAssigned,
    PhaseCompleted,
    PhaseFailed,
    PhaseLeaseExpired,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from chorus.events.workflow import TaskAccepted as WorkflowTaskAccepted
from chorus.projections.pending import Pending, continued, fold
from chorus.projections.readstore import NOT_CREATED, Connection
from chorus.projections.tables import Table

NAME = "agent_tasks"

DDL = [
    """CREATE TABLE IF NOT EXISTS task_workflows (
        id TEXT PRIMARY KEY,
        started TEXT NOT NULL,      -- the WorkflowStarted data
        results TEXT NOT NULL       -- phase -> result, in completion order
    )""",
    """CREATE TABLE IF NOT EXISTS agent_tasks (
        agent_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        owner_id TEXT NOT NULL,     -- the workflow or session
        kind TEXT NOT NULL,         -- phase | session
        attempt INTEGER NOT NULL,
        accepted INTEGER NOT NULL,
        message TEXT NOT NULL,      -- the task message (JSON)
        position INTEGER NOT NULL,  -- log position of the assignment
        PRIMARY KEY (agent_id, task_id)
    )""",
    "CREATE INDEX IF NOT EXISTS agent_tasks_owner ON agent_tasks (owner_id)",
    # A session's or a phase's tasks are read together (the table's group): without this
    # index each such read scanned the whole table.
    "CREATE INDEX IF NOT EXISTS agent_tasks_task ON agent_tasks (task_id)",
]
TABLES = ["task_workflows", "agent_tasks"]

_json = msgspec.json.Encoder(order="sorted")
WORKFLOWS = Table("task_workflows", ("id", "started", "results"), key=("id",))
TASKS = Table(
    "agent_tasks",
    ("agent_id", "task_id", "owner_id", "kind", "attempt", "accepted", "message", "position"),
    key=("agent_id", "task_id"),
    group="task_id",
)
_decode = msgspec.json.Decoder()
ENDS_WORKFLOW = (WorkflowCompleted, WorkflowFailed, WorkflowCancelled)
ENDS_SESSION = (SessionFinalised, SessionTimedOut, SessionCancelled)
_started = msgspec.json.Decoder(WorkflowStarted)


class AgentTasksProjection:
    """Rows changed in the batch's memory, written at its end (``projections.pending``)."""

    name = NAME
    aggregates = frozenset({"workflow", "session"})
    ddl = DDL
    tables = TABLES

    def apply(self, conn: Connection, record: EventRecord) -> None:
        fold(conn, self._apply, record)

    def prefetch(self, rows: Pending, records: Sequence[EventRecord]) -> None:
        sessions = [r for r in records if r.aggregate == "session"]
        workflows = [r for r in records if r.aggregate == "workflow"]
        rows.load(WORKFLOWS, continued(workflows, "WorkflowStarted"))
        # A submitted result deletes its participant's task by key, reading nothing; the
        # session's other events read its tasks whole.
        rows.load_groups(TASKS, continued(
            [r for r in sessions if not isinstance(r.event, ResultSubmitted)], "SessionOpened"
        ))  # fmt: skip
        rows.load_groups(TASKS, {phase_task_id(r.aggregate_id, phase) for r in workflows
                                 if isinstance(phase := getattr(r.event, "phase", None), str)})  # fmt: skip

    def _apply(self, rows: Pending, record: EventRecord) -> None:
        if record.aggregate == "workflow":
            self._workflow(rows, record)
        else:
            self._session(rows, record)

    def _workflow(self, rows: Pending, record: EventRecord) -> None:
        wid, event = record.aggregate_id, record.event
        if isinstance(event, WorkflowStarted):
            rows.put(
                WORKFLOWS, {"id": wid, "started": _json.encode(event).decode(), "results": "{}"}
            )
            return
        if isinstance(event, ENDS_WORKFLOW):
            rows.delete_where(TASKS, owner_id=wid)
            rows.delete(WORKFLOWS, wid)
            return
        row = rows.get(WORKFLOWS, wid)
        if row is None:
            return
        match event:
            case PhaseAssigned():
                results = _decode.decode(row["results"])
                task = phase_task(wid, _started.decode(row["started"]), results, event)
                _open(rows, [event.agent_id], task, wid, record.position)
            case WorkflowTaskAccepted():
                rows.update_where(TASKS, {"accepted": 1},
                                  task_id=phase_task_id(wid, event.phase), agent_id=event.agent_id)  # fmt: skip
            case PhaseLeaseExpired() | PhaseFailed():
                rows.delete_where(TASKS, task_id=phase_task_id(wid, event.phase))
            case PhaseCompleted():
                rows.delete_where(TASKS, task_id=phase_task_id(wid, event.phase))
                results = {**_decode.decode(row["results"]), event.phase: event.result}
                rows.update(WORKFLOWS, row, results=_json.encode(results).decode())

    def _session(self, rows: Pending, record: EventRecord) -> None:
        sid, event = record.aggregate_id, record.event
        match event:
            case SessionOpened():
                task = session_task(sid, event)
                rows.created(TASKS, sid)  # the session's first event: no task of it yet
                _open(rows, event.participants, task, sid, record.position)
            case ParticipantReplaced():
                rows.delete(TASKS, event.replaced, sid)
                others = rows.rows(TASKS, sid)
                if others:  # every participant's row holds the same session task
                    task = msgspec.json.decode(others[0]["message"], type=SessionTask)
                    _open(rows, [event.replacement], task, sid, record.position)
            case SessionTaskAccepted():
                rows.update_where(TASKS, {"accepted": 1}, task_id=sid, agent_id=event.agent_id)
            case ResultSubmitted():
                rows.delete(TASKS, event.agent_id, sid)
            case _ if isinstance(event, ENDS_SESSION):
                # A session's tasks are its own (owner and task id are the session's id).
                rows.delete_where(TASKS, task_id=sid, owner_id=sid)


def _open(
    rows: Pending,
    agents: list[str],
    task: PhaseTask | SessionTask,
    owner: str,
    position: int,
) -> None:
    """Open ``task`` for each of ``agents`` (a session's participants share one message,
    encoded once)."""
    kind = "phase" if isinstance(task, PhaseTask) else "session"
    message = TASK_ENCODER.encode(task).decode()
    for agent in agents:
        rows.put(TASKS, {
            "agent_id": agent, "task_id": task.task_id, "owner_id": owner, "kind": kind,
            "attempt": task.attempt, "accepted": 0, "message": message, "position": position,
        })  # fmt: skip


# Queries ------------------------------------------------------------------------------------


class AgentTaskView(msgspec.Struct, kw_only=True):
    """One open task: the inbox message, and whether the agent acknowledged it."""

    task_id: str
    kind: str
    attempt: int
    accepted: bool
    task: dict[str, Any]


class AgentTaskList(msgspec.Struct, kw_only=True):
    agent_id: str
    items: list[AgentTaskView]


def list_agent_tasks(conn: Connection, agent_id: str) -> AgentTaskList:
    """Oldest assignment first."""
    try:
        rows = conn.execute(
            "SELECT * FROM agent_tasks WHERE agent_id=? ORDER BY position", (agent_id,)
        ).fetchall()
    except NOT_CREATED:  # the read model is not built yet
        rows = []
    return AgentTaskList(
        agent_id=agent_id,
        items=[
            AgentTaskView(
                task_id=r["task_id"], kind=r["kind"], attempt=r["attempt"],
                accepted=bool(r["accepted"]), task=_decode.decode(r["message"]),
            )
            for r in rows
        ],
    )  # fmt: skip
