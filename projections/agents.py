"""The ``agents`` read model: the registry, who was given which task, verdicts on claims,
and the reliability metrics computed from those rows.

Everything here is a fold of events (agent, session and workflow), so it is rebuilt from
position 0 like every read model, and a metric can be asked ``as_of`` any past moment:
only rows stamped at or before it count.

Status: ``online`` after registering or coming back online, ``offline`` after missed
heartbeats, ``retired``; an online agent with open assignments is shown as ``busy``. An
assignment is open from the moment the agent is given the task (a session participation,
also as a replacement; a workflow phase it runs) until it submits its result, is replaced,
or the session / phase / workflow ends.

Timestamps are stored as fixed-width UTC strings (``2026-11-30T10:00:00.000000Z``) so
that comparing them as text compares them as times.

This module holds the fold (``AgentsProjection``); the tables are in ``agents_tables``,
the queries in ``agents_queries``, verdict views in ``agents_verdicts`` and the
reliability metrics in ``agents_metrics``. Their public names are re-exported here, so
callers keep one name for the read model (``projections.agents``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import msgspec
from chorus.contracts.feed import EventRecord
from chorus.events.agent import (
    AgentCameOnline,
    AgentCapabilitiesUpdated,
    AgentRegistered,
    AgentRetired,
    AgentWentOffline,
    CompletionRejected,
    CompletionVerified,
    TaskLeaseLost,
)

# The gateway's choices and the agents feed's check read the status rule through here.
from chorus.events.agent_status import ONLINE as ONLINE
from chorus.events.agent_status import STATUSES as STATUSES
from chorus.events.agent_status import status_after, status_set_by
from chorus.events.reliability import reliability_score
from chorus.events.session import (
    ParticipantReplaced,
    ResultSubmitted,
    SessionCancelled,
    SessionFinalised,
    SessionOpened,
    SessionTimedOut,
)
from chorus.events.workflow import (
    PhaseCompleted,
    PhaseFailed,
    PhaseLeaseExpired,
    PhaseStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
)
from chorus.projections.agents_metrics import TIMEFRAMES as TIMEFRAMES
from chorus.projections.agents_metrics import Metrics as Metrics
from chorus.projections.agents_metrics import VerdictFact as VerdictFact
from chorus.projections.agents_metrics import agent_metrics as agent_metrics
from chorus.projections.agents_metrics import compute_metrics as compute_metrics
from chorus.projections.agents_metrics import in_window as in_window
from chorus.projections.agents_metrics import nearest_rank as nearest_rank
from chorus.projections.agents_queries import SORTS as SORTS
from chorus.projections.agents_queries import AgentDetail as AgentDetail
from chorus.projections.agents_queries import AgentPage as AgentPage
from chorus.projections.agents_queries import AgentView as AgentView
from chorus.projections.agents_queries import Assignment as Assignment
from chorus.projections.agents_queries import agent_name as agent_name
from chorus.projections.agents_queries import agents_of as agents_of
from chorus.projections.agents_queries import decode_cursor as decode_cursor
from chorus.projections.agents_queries import encode_cursor as encode_cursor
from chorus.projections.agents_queries import get_agent as get_agent
from chorus.projections.agents_queries import list_agents as list_agents
from chorus.projections.agents_queries import reachable_agents as reachable_agents
from chorus.projections.agents_queries import registered_name as registered_name
from chorus.projections.agents_queries import shown_data as shown_data
from chorus.projections.agents_queries import status_of_event as status_of_event
from chorus.projections.agents_tables import DDL as DDL
from chorus.projections.agents_tables import NAME as NAME
from chorus.projections.agents_tables import SYSTEM as SYSTEM
from chorus.projections.agents_tables import TABLES as TABLES
from chorus.projections.agents_tables import parse_time as parse_time
from chorus.projections.agents_tables import stamp as stamp
from chorus.projections.agents_verdicts import RECENT_VERDICTS as RECENT_VERDICTS
from chorus.projections.agents_verdicts import VerdictView as VerdictView
from chorus.projections.agents_verdicts import get_verdict as get_verdict
from chorus.projections.agents_verdicts import recent_verdicts as recent_verdicts
from chorus.projections.agents_verdicts import verdict_from_record as verdict_from_record
from chorus.projections.agents_verdicts import verdict_view as verdict_view
from chorus.projections.pending import Pending, continued, fold
from chorus.projections.readstore import Connection
from chorus.projections.sessions import participants_named
from chorus.projections.tables import Table

_json = msgspec.json.Encoder(order="sorted")


AGENTS = Table(
    "agents",
    ("seq", "uuid", "agent_id", "type", "capabilities", "metadata", "owner", "status",
     "registered_at", "last_seen", "last_activity", "verified", "rejected", "score",
     "retired_reason", "version", "updated_at"),
    key=("agent_id",),
)  # fmt: skip
CAPABILITIES = Table(
    "agent_capabilities", ("capability", "agent_id"), key=("capability", "agent_id"),
    group="agent_id",
)  # fmt: skip
ASSIGNMENTS = Table(
    "agent_assignments", ("agent_id", "task_id", "kind", "assigned_at", "closed_at"),
    key=("agent_id", "task_id"), group="task_id",
)  # fmt: skip
VERDICTS = Table(
    "agent_verdicts",
    ("position", "agent_id", "task_id", "at", "verified", "task_kind", "completion_time",
     "output_hash", "assigned_at", "response_time", "quality_score", "score_parts", "reasons"),
    key=("position",),
)  # fmt: skip
UNCOUNTED = Table("agent_verdicts_uncounted", ("position",), key=("position",), insert_only=True)
ACTIVITY = Table("agent_activity", ("agent_id", "at"), key=("agent_id", "at"), insert_only=True)


SESSION_ENDS = (SessionFinalised, SessionTimedOut, SessionCancelled)


@functools.cache
def _naming(event_class: type) -> tuple[str, ...]:
    """The fields of an event class that may name an agent, worked out once per class:
    ``getattr(event, field, None)`` for each raised and caught an AttributeError for every
    field an event lacks (three per ResultSubmitted), 2-3% of a rebuild (profiled)."""
    fields = getattr(event_class, "__struct_fields__", ())
    return tuple(f for f in ("agent_id", "assignee", "replaced", "replacement") if f in fields)


class AgentsProjection:
    """Folds agent, session and workflow events into the agents tables (rows changed in
    the batch's memory, written at its end: ``projections.pending``)."""

    name = NAME
    aggregates = frozenset({"agent", "session", "workflow"})
    ddl = DDL
    tables = TABLES

    def apply(self, conn: Connection, record: EventRecord) -> None:
        fold(conn, self._apply, record)

    def prefetch(self, rows: Pending, records: Sequence[EventRecord]) -> None:
        """Agents by id (their events) and by name (who acted, submitted, was assigned),
        and the assignments of the sessions and phases the batch names."""
        rows.load(AGENTS, {r.aggregate_id for r in records if r.aggregate == "agent"}, "uuid")
        names = {r.actor for r in records}
        for r in records:
            event = r.event
            for field in _naming(type(event)):
                if isinstance(value := getattr(event, field), str):
                    names.add(value)
        rows.load(AGENTS, names)
        sessions = [r for r in records if r.aggregate == "session"]
        # Whole sessions only where the batch closes them (every open assignment); else
        # the assignments the events name.
        closed = {r.aggregate_id for r in sessions if isinstance(r.event, SESSION_ENDS)}
        rows.load_groups(ASSIGNMENTS, closed & continued(sessions, "SessionOpened"))
        rows.load_keys(ASSIGNMENTS, {(agent, sid) for sid, agent in participants_named(sessions)})
        rows.load_groups(ASSIGNMENTS, {f"{r.aggregate_id}/{phase}" for r in records
                                       if r.aggregate == "workflow"
                                       and isinstance(phase := getattr(r.event, "phase", None), str)})  # fmt: skip

    def _apply(self, rows: Pending, record: EventRecord) -> None:
        match record.aggregate:
            case "agent":
                self._agent(rows, record)
            case "session":
                self._session(rows, record)
            case "workflow":
                self._workflow(rows, record)

    # Agent events -------------------------------------------------------------------------

    def _agent(self, rows: Pending, record: EventRecord) -> None:
        event = record.event
        at = stamp(record.occurred_at)
        if isinstance(event, AgentRegistered):
            name = event.agent_id
            registered = stamp(event.registered_at)
            rows.put(AGENTS, {
                "seq": record.position, "uuid": record.aggregate_id, "agent_id": name,
                "type": event.type,
                "capabilities": _json.encode(sorted(set(event.capabilities))).decode(),
                "metadata": _json.encode(event.metadata).decode(), "owner": event.owner,
                "status": status_after(event, ""), "registered_at": registered,
                "last_seen": registered, "last_activity": registered, "verified": 0,
                "rejected": 0, "score": reliability_score(0, 0), "retired_reason": None,
                "version": record.version, "updated_at": at,
            })  # fmt: skip
            self._set_capabilities(rows, name, event.capabilities)
            _touch(rows, name, registered)
            # Activity recorded before the name was registered (a session naming it) counts.
            latest = rows.execute(
                "SELECT max(at) FROM agent_activity WHERE agent_id=?", (name,)
            ).fetchone()[0]
            row = rows.get(AGENTS, name)
            if row is not None:
                rows.update(AGENTS, row, last_activity=latest)
            return
        row = rows.find(AGENTS, "uuid", record.aggregate_id)
        if row is None:  # never registered: nothing to attach the event to
            return
        name = row["agent_id"]
        changes: dict[str, Any] = {"version": record.version, "updated_at": at}
        status = status_set_by(event)
        if status is not None:
            changes["status"] = status
        match event:
            case AgentCapabilitiesUpdated():
                changes["capabilities"] = _json.encode(sorted(set(event.capabilities))).decode()
                self._set_capabilities(rows, name, event.capabilities)
            case AgentRetired():
                changes["retired_reason"] = event.reason
            case AgentCameOnline() | AgentWentOffline():
                seen = stamp(event.last_seen)
                changes["last_seen"] = seen
                _touch(rows, name, seen)
            case TaskLeaseLost():  # a task it held and lost counts as a failure
                counts = (row["verified"], row["rejected"] + 1)
                changes.update(rejected=counts[1], score=reliability_score(*counts))
            case CompletionVerified() | CompletionRejected():
                verified = isinstance(event, CompletionVerified)
                earned = int(event.counts)
                counts = (row["verified"] + earned * verified,
                          row["rejected"] + earned * (not verified))  # fmt: skip
                changes.update(
                    verified=counts[0], rejected=counts[1], score=reliability_score(*counts)
                )
                self._verdict(rows, record, name, event)
                _touch(rows, name, at)
        rows.update(AGENTS, row, **changes)

    @staticmethod
    def _set_capabilities(rows: Pending, name: str, capabilities: list[str]) -> None:
        rows.delete_where(CAPABILITIES, agent_id=name)
        for capability in sorted(set(capabilities)):
            rows.put(CAPABILITIES, {"capability": capability, "agent_id": name})

    @staticmethod
    def _verdict(
        rows: Pending, record: EventRecord, name: str,
        verdict: CompletionVerified | CompletionRejected,
    ) -> None:  # fmt: skip
        view = verdict_view(record, name, verdict)
        rows.put(VERDICTS, {
            "position": record.position, "agent_id": name, "task_id": view.task_id,
            "at": view.recorded_at, "verified": int(view.verified), "task_kind": view.task_kind,
            "completion_time": view.completion_time, "output_hash": view.output_hash,
            "assigned_at": view.assigned_at, "response_time": view.response_time,
            "quality_score": view.quality_score,
            "score_parts": _json.encode(view.score_parts).decode(),
            "reasons": _json.encode(view.reasons).decode(),
        })  # fmt: skip
        if not view.counts:
            rows.put(UNCOUNTED, {"position": record.position})

    # Session events: participations are assignments ---------------------------------------

    def _session(self, rows: Pending, record: EventRecord) -> None:
        event = record.event
        sid = record.aggregate_id
        at = stamp(record.occurred_at)
        match event:
            case SessionOpened():
                # The engine's own notion of "assigned at" (evidence is checked against it).
                opened = event.deadline - timedelta(seconds=event.timeout_seconds)
                rows.created(ASSIGNMENTS, sid)  # the session's first event: no task of it yet
                _assign_all(rows, event.participants, sid, "session", stamp(opened))
            case ParticipantReplaced():
                _close(rows, event.replaced, sid, at)
                _assign_all(rows, [event.replacement], sid, "session", stamp(event.assigned_at))
            case ResultSubmitted():
                _close(rows, event.agent_id, sid, at)
                _touch(rows, event.agent_id, at)
            case _ if isinstance(event, SESSION_ENDS):
                rows.update_where(ASSIGNMENTS, {"closed_at": at}, task_id=sid, closed_at=None)

    # Workflow events: a running phase is its assignee's task -------------------------------

    def _workflow(self, rows: Pending, record: EventRecord) -> None:
        event = record.event
        wid = record.aggregate_id
        at = stamp(record.occurred_at)
        if isinstance(event, WorkflowCompleted | WorkflowFailed | WorkflowCancelled):
            rows.execute(
                "UPDATE agent_assignments SET closed_at=? WHERE kind='phase' AND task_id LIKE ? "
                "AND closed_at IS NULL",
                (at, f"{wid}/%"),
            )
            return
        phase = getattr(event, "phase", None)  # every other workflow event names its phase
        if phase is None:
            return
        task_id = f"{wid}/{phase}"
        if isinstance(event, PhaseStarted):
            assignee = event.assignee
            if assignee != SYSTEM:
                started = event.started_at
                assigned = stamp(started) if started else at
                held = rows.get(ASSIGNMENTS, assignee, task_id)
                if held is None:
                    rows.put(ASSIGNMENTS, {"agent_id": assignee, "task_id": task_id,
                                           "kind": "phase", "assigned_at": assigned,
                                           "closed_at": None})  # fmt: skip
                else:
                    rows.update(ASSIGNMENTS, held, assigned_at=assigned, closed_at=None)
            if record.actor == assignee:
                _touch(rows, assignee, at)
            return
        holders = {r["agent_id"] for r in rows.rows(ASSIGNMENTS, task_id) if r["closed_at"] is None}
        if record.actor in holders:
            _touch(rows, record.actor, at)
        if isinstance(event, PhaseLeaseExpired):
            _close(rows, event.agent_id, task_id, at)
        if isinstance(event, PhaseCompleted | PhaseFailed):
            rows.update_where(ASSIGNMENTS, {"closed_at": at}, task_id=task_id, closed_at=None)


def _assign_all(rows: Pending, agents: Iterable[str], task_id: str, kind: str, at: str) -> None:
    for agent in agents:
        rows.add(ASSIGNMENTS, {"agent_id": agent, "task_id": task_id, "kind": kind,
                               "assigned_at": at, "closed_at": None})  # fmt: skip


def _close(rows: Pending, agent: str, task_id: str, at: str) -> None:
    held = rows.get(ASSIGNMENTS, agent, task_id)
    if held is not None and held["closed_at"] is None:
        rows.update(ASSIGNMENTS, held, closed_at=at)


def _touch(rows: Pending, agent: str, at: str) -> None:
    """The record shows ``agent`` acting at ``at``: registering, being seen by the liveness
    monitor, submitting a result, reporting on its phase, claiming a completion."""
    rows.put(ACTIVITY, {"agent_id": agent, "at": at})
    row = rows.get(AGENTS, agent)
    if row is not None and row["last_activity"] < at:
        rows.update(AGENTS, row, last_activity=at)
