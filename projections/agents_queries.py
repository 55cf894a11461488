"""Queries of the ``agents`` read model: one agent, pages of agents by capability, status
and success rate, who holds a task, who should answer a ping; and what the agents feed
shows of an agent event. The status shown is the one rule of ``chorus.events.agent_status``
(``busy`` is derived from open assignments, never stored)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import msgspec
from chorus.contracts.feed import EventRecord
from chorus.events.agent import (
    AgentRegistered,
    CompletionRejected,
    CompletionVerified,
)
from chorus.events.agent_status import (
    ONLINE,
    shown_status,
    shown_status_sql,
    status_set_by,
)
from chorus.events.codec import data_without
from chorus.events.reliability import success_rate
from chorus.projections.readstore import NOT_CREATED, Connection, Row
from chorus.projections.sessions import decode_cursor as decode_seq_cursor
from chorus.projections.sessions import encode_cursor as encode_seq_cursor

_decode = msgspec.json.Decoder()

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
