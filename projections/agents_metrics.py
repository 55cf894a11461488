"""Reliability metrics of one agent over a window (1h, 24h, 7d, all) ending at any
moment: a pure computation over the agent's rows, and the query that reads them. Only rows
stamped at or before ``as_of`` count."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from chorus.events.reliability import reliability_score, success_rate
from chorus.projections.agents_tables import parse_time, stamp
from chorus.projections.readstore import NOT_CREATED, Connection

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
