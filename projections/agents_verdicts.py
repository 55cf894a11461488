"""Verdicts on completion claims as the API shows them: from the read model's rows, or
straight from a stored verdict event (when the read model lags), and the latest few per
agent for the console's sparkline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from chorus.contracts.feed import EventRecord
from chorus.events.agent import (
    CompletionRejected,
    CompletionVerified,
)
from chorus.projections.agents_tables import stamp
from chorus.projections.readstore import NOT_CREATED, Connection, Row

_decode = msgspec.json.Decoder()


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
