"""Time travel: an aggregate's state as it was at a version or a moment, from its history.

The past state is rebuilt by folding the aggregate's recorded events (up to the version,
or those that occurred up to the moment) through the *same projection* that builds the
live read model, into a private in-memory SQLite database, and reading it back with the
same query. So a past view has exactly the shape of the current one, and nothing is read
from the live read model. The projections' folds are checked against the engine's folds
by the property tests (``tests/unit/test_time_travel.py``), so no second copy of the
domain fold is needed here and the import rules stay one-way.

Aggregates plug in through ``REWINDS``: an entry names the projection and the query, and,
for a view built partly from *other* aggregates' events, how to find those events up to the
cut-off (``context``). An agent's view is one: its busy status, assignments, task counts
and last activity come from the sessions and workflows that named it, so its past view
replays those too (see ``agent_context``; the cost is one scan of the session and workflow
topics of the log up to the cut-off).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from chorus.contracts.feed import EventRecord
from chorus.events.agent import AgentRegistered
from chorus.events.codec import EVENT_TYPES, decode_record, topic_of
from chorus.events.session import ParticipantReplaced, ResultSubmitted, SessionOpened
from chorus.events.workflow import PhaseStarted
from chorus.projections import agents, sessions, workflows
from chorus.projections.history import History
from chorus.projections.readstore import NOT_CREATED, Connection
from chorus.projections.runner import Projection


@dataclass(frozen=True)
class Cutoff:
    """Where the past ends: a log position (``at_version``) and/or a moment (``as_of``)."""

    position: int | None
    as_of: datetime | None

    def includes(self, record: EventRecord) -> bool:
        return (self.position is None or record.position <= self.position) and (
            self.as_of is None or record.occurred_at <= self.as_of
        )


#: Other aggregates' events that shape a view: (history, the aggregate's own records up to
#: the cut-off, the cut-off) -> those events, in position order.
Context = Callable[[History, list[EventRecord], Cutoff], list[EventRecord]]


@dataclass(frozen=True)
class Rewind:
    """How to rebuild one aggregate type's view: its projection and its read query."""

    aggregate: str
    projection: Callable[[], Projection]
    view: Callable[[Connection, str], Any]
    context: Context | None = None


def _workflow_view(conn: Connection, workflow_id: str) -> Any:
    """A past workflow has no estimate: that needs every workflow's durations at the time."""
    view = workflows.get_workflow(conn, workflow_id)
    return None if view is None else msgspec.structs.replace(view, estimated_completion=None)


def _agent_view(conn: Connection, aggregate_id: str) -> Any:
    """An agent is addressed by its name, its aggregate by a UUID: look the name up."""
    try:
        row = conn.execute("SELECT agent_id FROM agents WHERE uuid=?", (aggregate_id,)).fetchone()
    except NOT_CREATED:
        return None
    return None if row is None else agents.get_agent(conn, row[0])


_CONTEXT_TOPICS = [
    topic_of(aggregate, event_type)
    for aggregate in ("session", "workflow")
    for event_type in EVENT_TYPES[aggregate]
]


def _names(record: EventRecord, agent: str) -> bool:
    """Whether this session or workflow event gives ``agent`` a part in its aggregate."""
    match record.event:
        case SessionOpened(participants=participants):
            return agent in participants
        case ParticipantReplaced(replacement=replacement, replaced=replaced):
            return agent in (replacement, replaced)
        case ResultSubmitted(agent_id=agent_id):
            return agent_id == agent
        case PhaseStarted(assignee=assignee):
            return assignee == agent
    return False


def agent_context(history: History, own: list[EventRecord], cutoff: Cutoff) -> list[EventRecord]:
    """The session and workflow events that shape an agent's view, up to the cut-off: every
    event of each session or workflow from the event that first named the agent on.

    The agents projection touches an agent's rows only from such events, so folding them
    with the agent's own events gives exactly the view the live model showed then.
    """
    registered = own[0].event  # an agent's history starts with its registration
    if not isinstance(registered, AgentRegistered):
        return []
    agent = registered.agent_id
    needle = msgspec.json.encode(agent)
    involved: set[str] = set()
    found = []
    for n in history.log_notifications(_CONTEXT_TOPICS, stop=cutoff.position):
        key = str(n.originator_id)
        if key not in involved and needle not in n.state:  # cheap: most events never name it
            continue
        record = decode_record(n)
        if not cutoff.includes(record):
            continue
        if key not in involved and _names(record, agent):
            involved.add(key)
        if key in involved:
            found.append(record)
    return found


REWINDS: dict[str, Rewind] = {}


def register(rewind: Rewind) -> None:
    REWINDS[rewind.aggregate] = rewind


register(Rewind("session", sessions.SessionsProjection, sessions.get_session))
register(Rewind("workflow", workflows.WorkflowsProjection, _workflow_view))
register(Rewind("agent", agents.AgentsProjection, _agent_view, agent_context))


class PastState(msgspec.Struct, kw_only=True):
    """``view`` is None if the aggregate did not exist yet at that point."""

    view: Any
    version: int
    current_version: int


def fold(aggregate: str, aggregate_id: str, records: list[EventRecord]) -> Any:
    """The view after applying ``records`` (one aggregate's events, oldest first)."""
    rewind = REWINDS[aggregate]
    projection = rewind.projection()
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        for statement in projection.ddl:
            conn.execute(statement)
        for record in records:
            projection.apply(conn, record)
        return rewind.view(conn, aggregate_id)
    finally:
        conn.close()


def state_at(
    history: History,
    aggregate: str,
    aggregate_id: str,
    *,
    at_version: int | None = None,
    as_of: datetime | None = None,
) -> PastState | None:
    """The view at ``at_version`` or as of ``as_of``; None if the aggregate never existed.

    ``as_of`` takes the longest prefix of the history whose events occurred at or before
    it (an aggregate's events are recorded in time order by its single writer).
    """
    records: list[EventRecord] = []
    while batch := history.aggregate_events(
        aggregate, aggregate_id, after_version=records[-1].version if records else 0, limit=1000
    ):
        records.extend(batch)
    if not records:
        return None
    current = records[-1].version
    upto = len(records)
    if at_version is not None:
        upto = min(at_version, current)
    if as_of is not None:
        upto = next((i for i, r in enumerate(records) if r.occurred_at > as_of), len(records))
    if upto == 0:
        return PastState(view=None, version=0, current_version=current)
    past = records[:upto]
    context = REWINDS[aggregate].context
    if context is not None:
        cutoff = Cutoff(position=past[-1].position if as_of is None else None, as_of=as_of)
        past = sorted([*past, *context(history, past, cutoff)], key=lambda r: r.position)
    return PastState(
        view=fold(aggregate, aggregate_id, past),
        version=records[upto - 1].version,
        current_version=current,
    )
