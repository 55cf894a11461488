"""The ``workflows`` read model: one row per workflow, plus observed phase durations."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
from chorus.contracts.feed import EventRecord
from chorus.contracts.workflow_types import WorkflowType
from chorus.events.workflow import (
    PartialResultRecorded,
    PhaseAssigned,
    PhaseCompleted,
    PhaseFailed,
    PhaseLeaseExpired,
    PhaseProgressReported,
    PhaseStarted,
    PhaseWaiting,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowTypeDefined,
)
from chorus.projections.pending import Pending, continued, fold
from chorus.projections.readstore import NOT_CREATED, Connection, Row
from chorus.projections.sessions import (
    decode_cursor as decode_cursor,  # re-exported for the gateway
)
from chorus.projections.sessions import encode_cursor
from chorus.projections.tables import Table

NAME = "workflows"

DDL = [
    """CREATE TABLE IF NOT EXISTS workflows (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        workflow_type TEXT NOT NULL,
        status TEXT NOT NULL,
        priority TEXT NOT NULL,
        started_by TEXT NOT NULL,
        requirements TEXT NOT NULL,
        configuration TEXT NOT NULL,
        phases TEXT NOT NULL,
        current_phase TEXT,
        current_assignee TEXT,
        current_started_at TEXT,
        current_progress INTEGER NOT NULL,
        phases_completed TEXT NOT NULL,
        errors TEXT NOT NULL,
        partial_results TEXT NOT NULL,
        final_result TEXT,
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS workflows_status ON workflows (status, seq)",
    # Why the next phase is not running: nobody qualifies yet (a row while it waits).
    """CREATE TABLE IF NOT EXISTS workflow_waiting (
        id TEXT PRIMARY KEY,
        phase TEXT NOT NULL,
        capabilities TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS phase_durations (
        workflow_type TEXT NOT NULL,
        phase TEXT NOT NULL,
        completed INTEGER NOT NULL,
        total_seconds REAL NOT NULL,
        PRIMARY KEY (workflow_type, phase)
    )""",
]
TABLES = ["workflows", "phase_durations", "workflow_waiting"]
#: Events after which the next phase no longer waits for an agent.
NOT_WAITING = (PhaseAssigned, PhaseStarted, PhaseCompleted, WorkflowCompleted, WorkflowFailed,
               WorkflowCancelled)  # fmt: skip

_json = msgspec.json.Encoder(order="sorted")
_decode = msgspec.json.Decoder()


def _ts(value: datetime) -> str:
    return _json.encode(value)[1:-1].decode()  # as sessions._ts


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


WORKFLOWS = Table(
    "workflows",
    ("seq", "id", "workflow_type", "status", "priority", "started_by", "requirements",
     "configuration", "phases", "current_phase", "current_assignee", "current_started_at",
     "current_progress", "phases_completed", "errors", "partial_results", "final_result",
     "version", "created_at", "started_at", "finished_at", "updated_at"),
    key=("id",),
)  # fmt: skip
WAITING = Table("workflow_waiting", ("id", "phase", "capabilities"), key=("id",))
DURATIONS = Table(
    "phase_durations", ("workflow_type", "phase", "completed", "total_seconds"),
    key=("workflow_type", "phase"),
)  # fmt: skip


class WorkflowsProjection:
    """Rows changed in the batch's memory, written at its end (``projections.pending``)."""

    name = NAME
    aggregates = frozenset({"workflow"})
    ddl = DDL
    tables = TABLES

    def apply(self, conn: Connection, record: EventRecord) -> None:
        fold(conn, self._apply, record)

    def prefetch(self, rows: Pending, records: Sequence[EventRecord]) -> None:
        rows.load(WORKFLOWS, continued(records, "WorkflowStarted"))

    def _apply(self, rows: Pending, record: EventRecord) -> None:
        event = record.event
        wid = record.aggregate_id
        at = _ts(record.occurred_at)
        if isinstance(event, WorkflowStarted):
            rows.put(WORKFLOWS, {
                "seq": record.position, "id": wid, "workflow_type": event.workflow_type,
                "status": "queued", "priority": event.priority, "started_by": event.started_by,
                "requirements": event.requirements,
                "configuration": _json.encode(event.configuration).decode(),
                "phases": _json.encode(event.phases).decode(), "current_phase": None,
                "current_assignee": None, "current_started_at": None, "current_progress": 0,
                "phases_completed": "[]", "errors": "[]", "partial_results": "{}",
                "final_result": None, "version": record.version, "created_at": at,
                "started_at": None, "finished_at": None, "updated_at": at,
            })  # fmt: skip
            return
        row = rows.get(WORKFLOWS, wid)
        if row is None:
            return
        changes: dict[str, Any] = {"version": record.version, "updated_at": at}
        if isinstance(event, NOT_WAITING):
            rows.delete(WAITING, wid)
        match event:
            case PhaseWaiting():
                rows.put(WAITING, {"id": wid, "phase": event.phase,
                                   "capabilities": _json.encode(event.capabilities).decode()})  # fmt: skip
            case PhaseLeaseExpired():
                changes.update(
                    status="queued", current_phase=None, current_assignee=None,
                    current_progress=0, current_started_at=None,
                )  # fmt: skip
            case PhaseStarted():
                changes.update(
                    status="running", current_phase=event.phase, current_progress=0,
                    current_assignee=event.assignee, current_started_at=at,
                    started_at=row["started_at"] or at,
                )  # fmt: skip
            case PhaseProgressReported():
                changes["current_progress"] = event.progress
            case PartialResultRecorded():
                partial = _decode.decode(row["partial_results"])
                partial.setdefault(event.phase, []).append(event.result)
                changes["partial_results"] = _json.encode(partial).decode()
            case PhaseCompleted():
                done = [*_decode.decode(row["phases_completed"]), event.phase]
                changes.update(
                    phases_completed=_json.encode(done).decode(), current_phase=None,
                    current_assignee=None, current_progress=0, current_started_at=None,
                )  # fmt: skip
                if row["current_started_at"]:
                    seconds = (
                        record.occurred_at - _parse(row["current_started_at"])
                    ).total_seconds()
                    _observe(rows, row["workflow_type"], event.phase, max(seconds, 0.0))
            case PhaseFailed():
                error = {"phase": event.phase, **msgspec.to_builtins(event.error)}
                if event.attempts:  # every attempt that lost its lease before
                    error["attempts"] = event.attempts
                errors = [*_decode.decode(row["errors"]), error]
                changes["errors"] = _json.encode(errors).decode()
            case WorkflowCompleted():
                changes.update(status="completed", finished_at=at,
                               final_result=_json.encode(event.final_result).decode())  # fmt: skip
            case WorkflowFailed() | WorkflowCancelled():
                changes.update(
                    status="failed" if isinstance(event, WorkflowFailed) else "cancelled",
                    finished_at=at, current_phase=None, current_assignee=None,
                    current_progress=0, current_started_at=None,
                )  # fmt: skip
        rows.update(WORKFLOWS, row, **changes)


def _observe(rows: Pending, workflow_type: str, phase: str, seconds: float) -> None:
    """One more completed run of ``phase`` of ``workflow_type``, lasting ``seconds``."""
    seen = rows.get(DURATIONS, workflow_type, phase)
    if seen is None:
        rows.put(DURATIONS, {"workflow_type": workflow_type, "phase": phase, "completed": 1,
                             "total_seconds": seconds})  # fmt: skip
    else:
        rows.update(DURATIONS, seen, completed=seen["completed"] + 1,
                    total_seconds=seen["total_seconds"] + seconds)  # fmt: skip


# Queries ------------------------------------------------------------------------------------


def defined_types(records: Iterable[EventRecord]) -> list[WorkflowType]:
    """The workflow types defined in the registry's history (its records, oldest first)."""
    return [r.event.workflow_type for r in records if isinstance(r.event, WorkflowTypeDefined)]


class WaitingForAgent(msgspec.Struct, kw_only=True):
    """The next phase waits: no online agent has these capabilities and a free slot."""

    phase: str
    capabilities: list[str]


class WorkflowView(msgspec.Struct, kw_only=True):
    workflow_id: str
    #: The seed's name for the same id.
    session_id: str
    #: One line saying where the workflow stands (and why, when it waits or failed).
    message: str
    workflow_type: str
    status: str
    priority: str
    progress: int
    current_phase: str | None
    current_assignee: str | None
    phases: list[str]
    phases_completed: list[str]
    errors: list[dict[str, Any]]
    partial_results: dict[str, list[dict[str, Any]]]
    final_result: dict[str, Any] | None
    requirements: str
    configuration: dict[str, Any]
    started_by: str
    version: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    estimated_completion: str | None
    waiting_for_agent: WaitingForAgent | None = None


class WorkflowPage(msgspec.Struct, kw_only=True):
    items: list[WorkflowView]
    next_cursor: str | None


def _average_seconds(conn: Connection, workflow_type: str) -> dict[str, float]:
    return {
        r["phase"]: r["total_seconds"] / r["completed"]
        for r in conn.execute(
            "SELECT phase, completed, total_seconds FROM phase_durations WHERE workflow_type=?",
            (workflow_type,),
        )
    }


def estimate_completion(
    phases: list[dict[str, Any]],
    completed: int,
    since: datetime,
    observed: dict[str, float],
) -> datetime:
    """From the start of the running (or next) phase, the remaining phases' durations:
    the average observed for this type where known, else the type's expected duration."""
    remaining = phases[completed:]
    seconds = sum(observed.get(p["name"], float(p.get("expected_seconds", 600))) for p in remaining)
    return since + timedelta(seconds=seconds)


def _waiting(conn: Connection, workflow_id: str) -> WaitingForAgent | None:
    try:
        row = conn.execute(
            "SELECT phase, capabilities FROM workflow_waiting WHERE id=?", (workflow_id,)
        ).fetchone()
    except NOT_CREATED:  # a read store from before the table existed
        return None
    if row is None:
        return None
    return WaitingForAgent(phase=row["phase"], capabilities=_decode.decode(row["capabilities"]))


def _message(status: str, current: str | None, waiting: WaitingForAgent | None,
             errors: list[dict[str, Any]]) -> str:  # fmt: skip
    if waiting is not None and status == "queued":
        needs = ", ".join(waiting.capabilities) or "any capability"
        return f"Phase {waiting.phase} is waiting for an online agent with {needs}"
    if status == "running" and current:
        return f"Running phase {current}"
    if status == "failed" and errors:
        return f"Workflow failed in phase {errors[-1]['phase']}: {errors[-1]['message']}"
    return f"Workflow {status}"


def _view(conn: Connection, row: Row) -> WorkflowView:
    phases = _decode.decode(row["phases"])
    done = _decode.decode(row["phases_completed"])
    status = row["status"]
    waiting = _waiting(conn, row["id"])
    errors = _decode.decode(row["errors"])
    n = len(phases)
    progress = 100 if status == "completed" else (len(done) * 100 + row["current_progress"]) // n
    estimated = None
    if status in ("queued", "running"):
        since = _parse(row["current_started_at"] or row["updated_at"])
        observed = _average_seconds(conn, row["workflow_type"])
        estimated = _ts(estimate_completion(phases, len(done), since, observed))
    return WorkflowView(
        workflow_id=row["id"], session_id=row["id"], workflow_type=row["workflow_type"],
        status=status, message=_message(status, row["current_phase"], waiting, errors),
        waiting_for_agent=waiting if status == "queued" else None,
        priority=row["priority"], progress=progress, current_phase=row["current_phase"],
        current_assignee=row["current_assignee"], phases=[p["name"] for p in phases],
        phases_completed=done, errors=errors,
        partial_results=_decode.decode(row["partial_results"]),
        final_result=_decode.decode(row["final_result"]) if row["final_result"] else None,
        requirements=row["requirements"], configuration=_decode.decode(row["configuration"]),
        started_by=row["started_by"], version=row["version"], created_at=row["created_at"],
        started_at=row["started_at"], finished_at=row["finished_at"],
        updated_at=row["updated_at"], estimated_completion=estimated,
    )  # fmt: skip


def get_workflow(conn: Connection, workflow_id: str) -> WorkflowView | None:
    try:
        row = conn.execute("SELECT * FROM workflows WHERE id=?", (workflow_id,)).fetchone()
    except NOT_CREATED:
        return None
    return _view(conn, row) if row else None


def list_workflows(
    conn: Connection,
    *,
    status: str | None = None,
    workflow_type: str | None = None,
    priority: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> WorkflowPage:
    where: list[str] = []
    params: list[object] = []
    for column, value in (
        ("status", status),
        ("workflow_type", workflow_type),
        ("priority", priority),
    ):
        if value:
            where.append(f"{column}=?")
            params.append(value)
    if cursor:
        where.append("seq<?")
        params.append(decode_cursor(cursor))
    sql = "SELECT * FROM workflows" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY seq DESC LIMIT ?"
    params.append(limit + 1)
    try:
        rows = conn.execute(sql, params).fetchall()
    except NOT_CREATED:
        return WorkflowPage(items=[], next_cursor=None)
    more = len(rows) > limit
    rows = rows[:limit]
    return WorkflowPage(
        items=[_view(conn, r) for r in rows],
        next_cursor=encode_cursor(rows[-1]["seq"]) if more and rows else None,
    )
