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
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from chorus.events.agent_status import (
    shown_status,
    shown_status_sql,
    status_after,
    status_set_by,
)
from chorus.events.codec import data_without
from chorus.events.reliability import reliability_score, success_rate
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
from chorus.projections.readstore import NOT_CREATED, Connection, Row
from chorus.projections.sessions import decode_cursor as decode_seq_cursor
from chorus.projections.sessions import encode_cursor as encode_seq_cursor

NAME = "agents"

DDL = [
    """CREATE TABLE IF NOT EXISTS agents (
        seq INTEGER PRIMARY KEY,          -- log position of AgentRegistered
        uuid TEXT NOT NULL UNIQUE,        -- the agent aggregate's id
        agent_id TEXT NOT NULL UNIQUE,    -- the name
        type TEXT NOT NULL,
        capabilities TEXT NOT NULL,       -- JSON list, sorted
        metadata TEXT NOT NULL,
        owner TEXT NOT NULL,
        status TEXT NOT NULL,             -- online | offline | retired (busy is derived)
        registered_at TEXT NOT NULL,
        last_seen TEXT,
        last_activity TEXT NOT NULL,
        verified INTEGER NOT NULL,
        rejected INTEGER NOT NULL,
        score REAL NOT NULL,              -- events.reliability.reliability_score, all time
        retired_reason TEXT,
        version INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS agents_score ON agents (score DESC, agent_id)",
    """CREATE TABLE IF NOT EXISTS agent_capabilities (
        capability TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        PRIMARY KEY (capability, agent_id)
    )""",
    """CREATE TABLE IF NOT EXISTS agent_assignments (
        agent_id TEXT NOT NULL,
        task_id TEXT NOT NULL,            -- a session id, or <workflow_id>/<phase>
        kind TEXT NOT NULL,               -- session | phase
        assigned_at TEXT NOT NULL,
        closed_at TEXT,
        PRIMARY KEY (agent_id, task_id)
    )""",
    "CREATE INDEX IF NOT EXISTS agent_assignments_task ON agent_assignments (task_id)",
    """CREATE TABLE IF NOT EXISTS agent_verdicts (
        position INTEGER PRIMARY KEY,     -- log position of the verdict event
        agent_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        at TEXT NOT NULL,                 -- when the verdict was recorded
        verified INTEGER NOT NULL,
        task_kind TEXT,
        completion_time TEXT NOT NULL,
        output_hash TEXT NOT NULL,
        assigned_at TEXT,
        response_time REAL,
        quality_score REAL NOT NULL,
        score_parts TEXT NOT NULL,
        reasons TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS agent_verdicts_agent ON agent_verdicts (agent_id, at)",
    # Verdicts recorded with counts=false (events.reliability): shown, but in no metric.
    """CREATE TABLE IF NOT EXISTS agent_verdicts_uncounted (
        position INTEGER PRIMARY KEY      -- the verdict's log position
    )""",
    """CREATE TABLE IF NOT EXISTS agent_activity (
        agent_id TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (agent_id, at)
    ) WITHOUT ROWID""",
]
TABLES = ["agents", "agent_capabilities", "agent_assignments", "agent_verdicts",
          "agent_verdicts_uncounted", "agent_activity"]  # fmt: skip

#: The engine's own actor: a delegated phase is "assigned" to it, which is no agent's task.
SYSTEM = "system"

_json = msgspec.json.Encoder(order="sorted")
_decode = msgspec.json.Decoder()


def stamp(value: datetime | str) -> str:
    """A time as stored here: fixed-width UTC, so text order is time order."""
    if isinstance(value, str):
        value = parse_time(value)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    """RFC 3339 (``Z`` or an offset); a time without a zone is taken as UTC."""
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


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


# Reliability metrics (pure) -----------------------------------------------------------------

#: The windows a metric can be asked for; ``all`` is everything up to ``as_of``.
TIMEFRAMES: dict[str, timedelta | None] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "all": None,
}


@dataclass(frozen=True)
class VerdictFact:
    """One recorded verdict, as the metrics need it."""

    at: datetime
    verified: bool
    response_time: float | None = None
    quality_score: float = 0.0


class Metrics(msgspec.Struct, kw_only=True):
    """An agent's record over one window ending at ``as_of``."""

    agent_id: str
    timeframe: str
    as_of: str
    window_start: str | None  # None for ``all``
    success_rate: float | None  # verified / (verified + rejected); None without verdicts
    verified: int
    rejected: int
    total_tasks: int  # assignments given in the window
    response_time_p50: float | None  # seconds, nearest rank, verified completions only
    response_time_p95: float | None
    average_quality_score: float | None
    last_activity: str | None  # the latest activity at or before as_of (any time before)
    reliability_score: float  # events.reliability over the window's verdicts


def nearest_rank(values: Sequence[float], percent: int) -> float | None:
    """The ``percent``-th percentile by the nearest-rank method: the smallest value such that
    at least ``percent`` % of the values are less than or equal to it, i.e. the value at
    1-based rank ``ceil(percent / 100 * n)`` of the sorted values (rank 1 for 0 %). Always one
    of the observed values, never an interpolation; None for no values."""
    if not values:
        return None
    if not 0 <= percent <= 100:
        raise ValueError("percent must be within 0..100")
    ordered = sorted(values)
    rank = max(1, -(-percent * len(ordered) // 100))  # integer ceil: no float rounding
    return ordered[rank - 1]


def in_window(at: datetime, start: datetime | None, as_of: datetime) -> bool:
    """A window is ``(as_of - length, as_of]``: a row exactly at ``as_of`` counts, one exactly
    at the start belongs to the window before."""
    return at <= as_of and (start is None or at > start)


def compute_metrics(
    agent_id: str,
    *,
    timeframe: str,
    as_of: datetime,
    verdicts: Iterable[VerdictFact],
    assigned: Iterable[datetime],
    activity: Iterable[datetime],
) -> Metrics:
    """The metrics of one window from the agent's rows (rows after ``as_of`` are ignored)."""
    length = TIMEFRAMES[timeframe]
    start = as_of - length if length is not None else None
    window = [v for v in verdicts if in_window(v.at, start, as_of)]
    verified = [v for v in window if v.verified]
    rejected = len(window) - len(verified)
    times = [v.response_time for v in verified if v.response_time is not None]
    seen = [a for a in activity if a <= as_of]
    return Metrics(
        agent_id=agent_id,
        timeframe=timeframe,
        as_of=stamp(as_of),
        window_start=stamp(start) if start is not None else None,
        success_rate=success_rate(len(verified), rejected),
        verified=len(verified),
        rejected=rejected,
        total_tasks=sum(in_window(a, start, as_of) for a in assigned),
        response_time_p50=nearest_rank(times, 50),
        response_time_p95=nearest_rank(times, 95),
        average_quality_score=(
            round(math.fsum(v.quality_score for v in window) / len(window), 6) if window else None
        ),
        last_activity=stamp(max(seen)) if seen else None,
        reliability_score=reliability_score(len(verified), rejected),
    )


# Queries ------------------------------------------------------------------------------------

SORTS = ("registered", "reliability")


class Assignment(msgspec.Struct, kw_only=True):
    task_id: str
    kind: str
    assigned_at: str


class AgentView(msgspec.Struct, kw_only=True):
    """An agent as the gateway lists it. Rates and the score are over its whole record."""

    agent_id: str
    uuid: str
    type: str
    capabilities: list[str]
    metadata: dict[str, Any]
    owner: str
    status: str  # online | busy | offline | retired
    registered_at: str
    last_seen: str | None
    last_activity: str
    verified: int
    rejected: int
    avg_success_rate: float | None
    total_tasks: int
    open_tasks: int
    reliability_score: float
    retired_reason: str | None
    version: int
    updated_at: str


class AgentDetail(AgentView, kw_only=True):
    open_assignments: list[Assignment]


class AgentPage(msgspec.Struct, kw_only=True):
    items: list[AgentView]
    next_cursor: str | None


class VerdictView(msgspec.Struct, kw_only=True):
    """The engine's verdict on one completion claim."""

    agent_id: str
    task_id: str
    verdict: str  # verified | rejected
    verified: bool
    reasons: list[dict[str, Any]]
    quality_score: float
    score_parts: dict[str, float]
    response_time: float | None
    completion_time: str
    output_hash: str
    task_kind: str | None
    assigned_at: str | None
    recorded_at: str
    position: int
    #: False: recorded, but it does not move reliability (events.reliability).
    counts: bool = True


#: Each agent row with the derived status and its task counts.
_ROWS = """
SELECT * FROM (
    SELECT a.*,
        (SELECT count(*) FROM agent_assignments t WHERE t.agent_id=a.agent_id) AS total_tasks,
        (SELECT count(*) FROM agent_assignments t
            WHERE t.agent_id=a.agent_id AND t.closed_at IS NULL) AS open_tasks
    FROM agents a
) r
"""


def _shown_status(row: Row) -> str:
    return shown_status(str(row["status"]), row["open_tasks"])


def _view(row: Row) -> AgentView:
    return AgentView(
        agent_id=row["agent_id"], uuid=row["uuid"], type=row["type"],
        capabilities=_decode.decode(row["capabilities"]),
        metadata=_decode.decode(row["metadata"]), owner=row["owner"],
        status=_shown_status(row), registered_at=row["registered_at"],
        last_seen=row["last_seen"], last_activity=row["last_activity"],
        verified=row["verified"], rejected=row["rejected"],
        avg_success_rate=success_rate(row["verified"], row["rejected"]),
        total_tasks=row["total_tasks"], open_tasks=row["open_tasks"],
        reliability_score=row["score"], retired_reason=row["retired_reason"],
        version=row["version"], updated_at=row["updated_at"],
    )  # fmt: skip


def get_agent(conn: Connection, agent_id: str) -> AgentDetail | None:
    try:
        row = conn.execute(_ROWS + " WHERE r.agent_id=?", (agent_id,)).fetchone()
    except NOT_CREATED:  # not created yet
        return None
    if row is None:
        return None
    open_rows = conn.execute(
        "SELECT task_id, kind, assigned_at FROM agent_assignments "
        "WHERE agent_id=? AND closed_at IS NULL ORDER BY assigned_at, task_id",
        (agent_id,),
    ).fetchall()
    view = _view(row)
    return AgentDetail(
        **msgspec.structs.asdict(view),
        open_assignments=[
            Assignment(task_id=r["task_id"], kind=r["kind"], assigned_at=r["assigned_at"])
            for r in open_rows
        ],
    )


def agent_name(conn: Connection, uuid: str) -> str | None:
    """The name of the agent whose aggregate id is ``uuid``, once it is projected."""
    try:
        row = conn.execute("SELECT agent_id FROM agents WHERE uuid=?", (uuid,)).fetchone()
    except NOT_CREATED:
        return None
    return str(row[0]) if row else None


def agents_of(conn: Connection, aggregate_id: str) -> list[str]:
    """Every agent ever assigned a task of this session or workflow (open or closed)."""
    try:
        rows = conn.execute(
            # A range, not LIKE, so the index on task_id serves it: the
            # session itself, and "<workflow>/<phase>" (everything from "<id>/" below "<id>0").
            "SELECT DISTINCT agent_id FROM agent_assignments "
            "WHERE task_id=? OR (task_id >= ? AND task_id < ?) ORDER BY agent_id",
            (aggregate_id, f"{aggregate_id}/", f"{aggregate_id}0"),
        ).fetchall()
    except NOT_CREATED:
        return []
    return [str(r[0]) for r in rows]


#: Verdicts per agent a sparkline shows (the console's agents table).
RECENT_VERDICTS = 20


def recent_verdicts(
    conn: Connection, agent_ids: Sequence[str], per_agent: int = RECENT_VERDICTS
) -> dict[str, list[bool]]:
    """Each agent's latest ``per_agent`` verdicts, oldest first (True: verified), in one
    query for a whole page of agents."""
    if not agent_ids:
        return {}
    marks = ", ".join("?" * len(agent_ids))
    try:
        rows = conn.execute(
            "SELECT agent_id, verified FROM (SELECT agent_id, verified, position, ROW_NUMBER() "
            "OVER (PARTITION BY agent_id ORDER BY position DESC) AS n FROM agent_verdicts "
            f"WHERE agent_id IN ({marks})) AS latest WHERE n <= ? ORDER BY agent_id, position",
            (*agent_ids, per_agent),
        ).fetchall()
    except NOT_CREATED:  # not created yet
        return {}
    found: dict[str, list[bool]] = {agent: [] for agent in agent_ids}
    for agent, verified in rows:
        found[str(agent)].append(bool(verified))
    return found


def reachable_agents(conn: Connection) -> list[str]:
    """Agents that should answer a ping: online (busy included), by name."""
    try:
        rows = conn.execute(
            f"SELECT agent_id FROM agents WHERE status='{ONLINE}' ORDER BY agent_id"
        ).fetchall()
    except NOT_CREATED:
        return []
    return [str(r[0]) for r in rows]


def encode_cursor(sort: str, row: Row) -> str:
    if sort == "reliability":
        text = f"r:{float(row['score'])!r}:{row['agent_id']}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    return encode_seq_cursor(int(row["seq"]))


def decode_cursor(cursor: str, sort: str = "registered") -> tuple[Any, ...]:
    """The keyset position a cursor names; ValueError for one we did not issue (for this
    sort order)."""
    if sort != "reliability":
        return (decode_seq_cursor(cursor),)
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        text = base64.urlsafe_b64decode(padded.encode()).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("invalid cursor") from error
    kind, _, rest = text.partition(":")
    score_text, _, agent_id = rest.partition(":")
    try:
        score = float(score_text)
    except ValueError:
        raise ValueError("invalid cursor") from None
    if kind != "r" or not agent_id or not 0.0 <= score <= 1.0:
        raise ValueError("invalid cursor")
    return (score, agent_id)


def list_agents(
    conn: Connection,
    *,
    capabilities: Sequence[str] = (),
    statuses: Sequence[str] = (),
    min_success_rate: float | None = None,
    sort: str = "registered",
    limit: int = 50,
    cursor: str | None = None,
) -> AgentPage:
    """Agents holding every one of ``capabilities``, in one of ``statuses`` (as shown:
    ``online`` means idle, ``busy`` online with open tasks), with a success rate of at
    least ``min_success_rate`` (agents without verdicts have none and are left out).

    ``sort=registered``: newest first. ``sort=reliability``: highest reliability score
    first, ties by name, the order routing ranks candidates in. Keyset-paged.
    """
    where: list[str] = []
    params: list[Any] = []
    for capability in dict.fromkeys(capabilities):
        where.append(
            "EXISTS (SELECT 1 FROM agent_capabilities c WHERE c.agent_id=r.agent_id "
            "AND c.capability=?)"
        )
        params.append(capability)
    if statuses:
        shown = shown_status_sql("r.status", "r.open_tasks>0")
        where.append(f"{shown} IN ({', '.join('?' * len(statuses))})")
        params.extend(statuses)
    if min_success_rate is not None:
        where.append(
            "r.verified + r.rejected > 0 AND "
            # * 1.0: a fraction on both backends (SQLite's REAL, PostgreSQL's NUMERIC, which round takes)
            "round(r.verified * 1.0 / (r.verified + r.rejected), 6) >= ?"
        )
        params.append(min_success_rate)
    if sort == "reliability":
        order = "r.score DESC, r.agent_id ASC"
        if cursor:
            score, agent_id = decode_cursor(cursor, sort)
            where.append("(r.score < ? OR (r.score = ? AND r.agent_id > ?))")
            params.extend([score, score, agent_id])
    else:
        order = "r.seq DESC"
        if cursor:
            where.append("r.seq < ?")
            params.append(decode_cursor(cursor)[0])
    sql = _ROWS + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order} LIMIT ?"
    params.append(limit + 1)
    try:
        rows = conn.execute(sql, params).fetchall()
    except NOT_CREATED:
        return AgentPage(items=[], next_cursor=None)
    more = len(rows) > limit
    rows = rows[:limit]
    return AgentPage(
        items=[_view(r) for r in rows],
        next_cursor=encode_cursor(sort, rows[-1]) if more and rows else None,
    )


def agent_metrics(
    conn: Connection, agent_id: str, timeframe: str, as_of: datetime
) -> Metrics | None:
    """The agent's metrics over ``timeframe`` ending at ``as_of``; None if not registered."""
    try:
        known = conn.execute("SELECT 1 FROM agents WHERE agent_id=?", (agent_id,)).fetchone()
    except NOT_CREATED:
        return None
    if known is None:
        return None
    until = stamp(as_of)
    verdicts = [
        VerdictFact(
            at=parse_time(r["at"]),
            verified=bool(r["verified"]),
            response_time=r["response_time"],
            quality_score=r["quality_score"],
        )
        for r in conn.execute(
            "SELECT at, verified, response_time, quality_score FROM agent_verdicts v "
            "WHERE agent_id=? AND at<=? AND NOT EXISTS (SELECT 1 FROM agent_verdicts_uncounted u "
            "WHERE u.position=v.position) ORDER BY at",
            (agent_id, until),
        )
    ]
    assigned = [
        parse_time(r[0])
        for r in conn.execute(
            "SELECT assigned_at FROM agent_assignments WHERE agent_id=? AND assigned_at<=?",
            (agent_id, until),
        )
    ]
    last = conn.execute(
        "SELECT max(at) FROM agent_activity WHERE agent_id=? AND at<=?", (agent_id, until)
    ).fetchone()[0]
    return compute_metrics(
        agent_id,
        timeframe=timeframe,
        as_of=as_of,
        verdicts=verdicts,
        assigned=assigned,
        activity=[parse_time(last)] if last else [],
    )


def _verdict_view(row: Row) -> VerdictView:
    verified = bool(row["verified"])
    return VerdictView(
        agent_id=row["agent_id"], task_id=row["task_id"],
        verdict="verified" if verified else "rejected", verified=verified,
        reasons=_decode.decode(row["reasons"]), quality_score=row["quality_score"],
        score_parts=_decode.decode(row["score_parts"]), response_time=row["response_time"],
        completion_time=row["completion_time"], output_hash=row["output_hash"],
        task_kind=row["task_kind"], assigned_at=row["assigned_at"], recorded_at=row["at"],
        position=row["position"], counts=bool(row["counts"]),
    )  # fmt: skip


def get_verdict(conn: Connection, position: int) -> VerdictView | None:
    """The verdict recorded at log ``position`` (a verify_completion reply's position)."""
    try:
        row = conn.execute(
            "SELECT *, NOT EXISTS (SELECT 1 FROM agent_verdicts_uncounted u WHERE "
            "u.position=v.position) AS counts FROM agent_verdicts v WHERE position=?",
            (position,),
        ).fetchone()
    except NOT_CREATED:
        return None
    return _verdict_view(row) if row else None


def verdict_from_record(record: EventRecord, agent_id: str) -> VerdictView | None:
    """The same view built straight from a stored verdict event (when the read model lags)."""
    event = record.event
    if not isinstance(event, CompletionVerified | CompletionRejected):
        return None
    return verdict_view(record, agent_id, event)


def verdict_view(
    record: EventRecord, agent_id: str, event: CompletionVerified | CompletionRejected
) -> VerdictView:
    """A verdict event as the API shows it (and as its row stores it)."""
    verified = isinstance(event, CompletionVerified)
    assigned = event.assigned_at if isinstance(event, CompletionVerified) else None
    return VerdictView(
        agent_id=agent_id, task_id=event.task_id,
        verdict="verified" if verified else "rejected", verified=verified,
        reasons=msgspec.to_builtins(event.reasons) if isinstance(event, CompletionRejected) else [],
        quality_score=event.quality_score,
        score_parts=dict(event.score_parts) if isinstance(event, CompletionVerified) else {},
        response_time=event.response_time, completion_time=stamp(event.completion_time),
        output_hash=event.output_hash,
        task_kind=event.task_kind if isinstance(event, CompletionVerified) else None,
        assigned_at=stamp(assigned) if assigned else None,
        recorded_at=stamp(record.occurred_at), position=record.position, counts=event.counts,
    )  # fmt: skip


# What the agents feed shows of an agent event ---------------------------------------------


def registered_name(record: EventRecord) -> str | None:
    """The agent's name, if ``record`` is its registration (later events carry only the
    aggregate id)."""
    event = record.event
    return event.agent_id if isinstance(event, AgentRegistered) else None


def status_of_event(record: EventRecord) -> str | None:
    """The status an agent event gives its agent (``chorus.events.agent_status``); None
    when it leaves the status as it was."""
    return status_set_by(record.event)


def shown_data(record: EventRecord, *, with_output_hash: bool) -> dict[str, Any]:
    """An agent event's data as a feed shows it: a verdict's ``output_hash`` is another
    agent's answer in short, so it is left out unless ``with_output_hash``."""
    if with_output_hash or not isinstance(record.event, CompletionVerified | CompletionRejected):
        return record.data
    return data_without(record, "output_hash")
