"""The ``agent_tasks`` read model: every agent's open tasks, as its inbox delivers them.

The pull fallback of the inbox (``GET /api/v1/agents/{id}/tasks``): an agent that cannot
keep a subscription, or just restarted, reads what it holds. A phase task is open from
``PhaseAssigned`` until the phase completes or fails, its lease is lost or the workflow
ends; a session task from the session's opening (or a replacement) until the participant
submits or the session closes. Rows hold the task message built by ``chorus.events.tasks``, the
same builder the dispatcher delivers with.
"""

from __future__ import annotations

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
from chorus.projections.readstore import NOT_CREATED, Connection, upsert

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
]
TABLES = ["task_workflows", "agent_tasks"]

_json = msgspec.json.Encoder(order="sorted")
_WORKFLOW = upsert("task_workflows", ("id", "started", "results"), ("id",))
_TASK = upsert(
    "agent_tasks",
    ("agent_id", "task_id", "owner_id", "kind", "attempt", "accepted", "message", "position"),
    ("agent_id", "task_id"),
)
_decode = msgspec.json.Decoder()
ENDS_WORKFLOW = (WorkflowCompleted, WorkflowFailed, WorkflowCancelled)
ENDS_SESSION = (SessionFinalised, SessionTimedOut, SessionCancelled)
_started = msgspec.json.Decoder(WorkflowStarted)


class AgentTasksProjection:
    name = NAME
    aggregates = frozenset({"workflow", "session"})
    ddl = DDL
    tables = TABLES

    def apply(self, conn: Connection, record: EventRecord) -> None:
        if record.aggregate == "workflow":
            self._workflow(conn, record)
        else:
            self._session(conn, record)

    def _workflow(self, conn: Connection, record: EventRecord) -> None:
        wid, event = record.aggregate_id, record.event
        if isinstance(event, WorkflowStarted):
            conn.execute(_WORKFLOW, (wid, _json.encode(event).decode(), "{}"))
            return
        if isinstance(event, ENDS_WORKFLOW):
            conn.execute("DELETE FROM agent_tasks WHERE owner_id=?", (wid,))
            conn.execute("DELETE FROM task_workflows WHERE id=?", (wid,))
            return
        row = conn.execute("SELECT * FROM task_workflows WHERE id=?", (wid,)).fetchone()
        if row is None:
            return
        match event:
            case PhaseAssigned():
                results = _decode.decode(row["results"])
                task = phase_task(wid, _started.decode(row["started"]), results, event)
                _open(conn, event.agent_id, task, wid, record.position)
            case WorkflowTaskAccepted():
                conn.execute(
                    "UPDATE agent_tasks SET accepted=1 WHERE task_id=? AND agent_id=?",
                    (phase_task_id(wid, event.phase), event.agent_id),
                )
            case PhaseLeaseExpired() | PhaseFailed():
                conn.execute(
                    "DELETE FROM agent_tasks WHERE task_id=?", (phase_task_id(wid, event.phase),)
                )
            case PhaseCompleted():
                conn.execute(
                    "DELETE FROM agent_tasks WHERE task_id=?", (phase_task_id(wid, event.phase),)
                )
                results = {**_decode.decode(row["results"]), event.phase: event.result}
                conn.execute(
                    "UPDATE task_workflows SET results=? WHERE id=?",
                    (_json.encode(results).decode(), wid),
                )

    def _session(self, conn: Connection, record: EventRecord) -> None:
        sid, event = record.aggregate_id, record.event
        match event:
            case SessionOpened():
                task = session_task(sid, event)
                for agent in event.participants:
                    _open(conn, agent, task, sid, record.position)
            case ParticipantReplaced():
                conn.execute(
                    "DELETE FROM agent_tasks WHERE task_id=? AND agent_id=?", (sid, event.replaced)
                )
                row = conn.execute(
                    "SELECT message FROM agent_tasks WHERE task_id=? LIMIT 1", (sid,)
                ).fetchone()
                if row is not None:
                    task = msgspec.json.decode(row["message"], type=SessionTask)
                    _open(conn, event.replacement, task, sid, record.position)
            case SessionTaskAccepted():
                conn.execute(
                    "UPDATE agent_tasks SET accepted=1 WHERE task_id=? AND agent_id=?",
                    (sid, event.agent_id),
                )
            case ResultSubmitted():
                conn.execute(
                    "DELETE FROM agent_tasks WHERE task_id=? AND agent_id=?", (sid, event.agent_id)
                )
            case _ if isinstance(event, ENDS_SESSION):
                conn.execute("DELETE FROM agent_tasks WHERE owner_id=?", (sid,))


def _open(
    conn: Connection,
    agent: str,
    task: PhaseTask | SessionTask,
    owner: str,
    position: int,
) -> None:
    kind = "phase" if isinstance(task, PhaseTask) else "session"
    conn.execute(
        _TASK,
        (agent, task.task_id, owner, kind, task.attempt, 0, TASK_ENCODER.encode(task).decode(),
         position),
    )  # fmt: skip


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
