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

from collections.abc import Iterable
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
from chorus.projections.readstore import Connection

_json = msgspec.json.Encoder(order="sorted")


class AgentsProjection:
    """Folds agent, session and workflow events into the agents tables."""

    name = NAME
    aggregates = frozenset({"agent", "session", "workflow"})
    ddl = DDL
    tables = TABLES

    def apply(self, conn: Connection, record: EventRecord) -> None:
        match record.aggregate:
            case "agent":
                self._agent(conn, record)
            case "session":
                self._session(conn, record)
            case "workflow":
                self._workflow(conn, record)

    # Agent events -------------------------------------------------------------------------

    def _agent(self, conn: Connection, record: EventRecord) -> None:
        event = record.event
        at = stamp(record.occurred_at)
        if isinstance(event, AgentRegistered):
            name = event.agent_id
            registered = stamp(event.registered_at)
            conn.execute(
                "INSERT INTO agents (seq, uuid, agent_id, type, capabilities, metadata, owner, "
                "status, registered_at, last_seen, last_activity, verified, rejected, score, "
                "retired_reason, version, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, NULL, ?, ?)",
                (
                    record.position, record.aggregate_id, name, event.type,
                    _json.encode(sorted(set(event.capabilities))).decode(),
                    _json.encode(event.metadata).decode(), event.owner, status_after(event, ""),
                    registered, registered, registered, reliability_score(0, 0), record.version,
                    at,
                ),
            )  # fmt: skip
            self._set_capabilities(conn, name, event.capabilities)
            _touch(conn, name, registered)
            # Activity recorded before the name was registered (a session naming it) counts.
            conn.execute(
                "UPDATE agents SET last_activity=(SELECT max(at) FROM agent_activity "
                "WHERE agent_id=?) WHERE agent_id=?",
                (name, name),
            )
            return
        row = conn.execute(
            "SELECT agent_id, verified, rejected FROM agents WHERE uuid=?", (record.aggregate_id,)
        ).fetchone()
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
                self._set_capabilities(conn, name, event.capabilities)
            case AgentRetired():
                changes["retired_reason"] = event.reason
            case AgentCameOnline() | AgentWentOffline():
                seen = stamp(event.last_seen)
                changes["last_seen"] = seen
                _touch(conn, name, seen)
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
                self._verdict(conn, record, name, event)
                _touch(conn, name, at)
        columns = ", ".join(f"{k}=?" for k in changes)
        conn.execute(f"UPDATE agents SET {columns} WHERE agent_id=?", (*changes.values(), name))

    @staticmethod
    def _set_capabilities(conn: Connection, name: str, capabilities: list[str]) -> None:
        conn.execute("DELETE FROM agent_capabilities WHERE agent_id=?", (name,))
        conn.executemany(
            "INSERT INTO agent_capabilities (capability, agent_id) VALUES (?, ?)",
            [(c, name) for c in sorted(set(capabilities))],
        )

    @staticmethod
    def _verdict(
        conn: Connection, record: EventRecord, name: str,
        verdict: CompletionVerified | CompletionRejected,
    ) -> None:  # fmt: skip
        view = verdict_view(record, name, verdict)
        conn.execute(
            "INSERT INTO agent_verdicts (position, agent_id, task_id, at, verified, task_kind, "
            "completion_time, output_hash, assigned_at, response_time, quality_score, "
            "score_parts, reasons) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.position, name, view.task_id, view.recorded_at, int(view.verified),
                view.task_kind, view.completion_time, view.output_hash, view.assigned_at,
                view.response_time, view.quality_score, _json.encode(view.score_parts).decode(),
                _json.encode(view.reasons).decode(),
            ),
        )  # fmt: skip
        if not view.counts:
            conn.execute(
                "INSERT INTO agent_verdicts_uncounted (position) VALUES (?)", (record.position,)
            )

    # Session events: participations are assignments ---------------------------------------

    def _session(self, conn: Connection, record: EventRecord) -> None:
        event = record.event
        sid = record.aggregate_id
        at = stamp(record.occurred_at)
        match event:
            case SessionOpened():
                # The engine's own notion of "assigned at" (evidence is checked against it).
                opened = event.deadline - timedelta(seconds=event.timeout_seconds)
                _assign_all(conn, event.participants, sid, "session", stamp(opened))
            case ParticipantReplaced():
                _close(conn, event.replaced, sid, at)
                _assign_all(conn, [event.replacement], sid, "session", stamp(event.assigned_at))
            case ResultSubmitted():
                _close(conn, event.agent_id, sid, at)
                _touch(conn, event.agent_id, at)
            case SessionFinalised() | SessionTimedOut() | SessionCancelled():
                conn.execute(
                    "UPDATE agent_assignments SET closed_at=? WHERE task_id=? AND closed_at IS NULL",
                    (at, sid),
                )

    # Workflow events: a running phase is its assignee's task -------------------------------

    def _workflow(self, conn: Connection, record: EventRecord) -> None:
        event = record.event
        wid = record.aggregate_id
        at = stamp(record.occurred_at)
        if isinstance(event, WorkflowCompleted | WorkflowFailed | WorkflowCancelled):
            conn.execute(
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
                conn.execute(
                    "INSERT INTO agent_assignments (agent_id, task_id, kind, assigned_at, "
                    "closed_at) VALUES (?, ?, 'phase', ?, NULL) ON CONFLICT(agent_id, task_id) "
                    "DO UPDATE SET assigned_at=excluded.assigned_at, closed_at=NULL",
                    (assignee, task_id, stamp(started) if started else at),
                )
            if record.actor == assignee:
                _touch(conn, assignee, at)
            return
        holder = conn.execute(
            "SELECT agent_id FROM agent_assignments WHERE task_id=? AND closed_at IS NULL",
            (task_id,),
        ).fetchone()
        if holder is not None and record.actor == holder["agent_id"]:
            _touch(conn, holder["agent_id"], at)
        if isinstance(event, PhaseLeaseExpired):
            _close(conn, event.agent_id, task_id, at)
        if isinstance(event, PhaseCompleted | PhaseFailed):
            conn.execute(
                "UPDATE agent_assignments SET closed_at=? WHERE task_id=? AND closed_at IS NULL",
                (at, task_id),
            )


def _assign_all(conn: Connection, agents: Iterable[str], task_id: str, kind: str, at: str) -> None:
    conn.executemany(
        "INSERT INTO agent_assignments (agent_id, task_id, kind, assigned_at, "
        "closed_at) VALUES (?, ?, ?, ?, NULL) ON CONFLICT DO NOTHING",
        [(agent, task_id, kind, at) for agent in agents],
    )


def _close(conn: Connection, agent: str, task_id: str, at: str) -> None:
    conn.execute(
        "UPDATE agent_assignments SET closed_at=? WHERE agent_id=? AND task_id=? "
        "AND closed_at IS NULL",
        (at, agent, task_id),
    )


def _touch(conn: Connection, agent: str, at: str) -> None:
    """The record shows ``agent`` acting at ``at``: registering, being seen by the liveness
    monitor, submitting a result, reporting on its phase, claiming a completion."""
    conn.execute(
        "INSERT INTO agent_activity (agent_id, at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (agent, at),
    )
    conn.execute(
        "UPDATE agents SET last_activity=? WHERE agent_id=? AND last_activity<?", (at, agent, at)
    )
