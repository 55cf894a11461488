"""The dispatcher's choices, as pure functions: which agent gets a phase, which phase first.

Kept apart from the process manager (engine/policies/dispatch.py) so they can be tested on plain
values: no bus, no store, no clock but the one passed in.

- **Who.** Online agents holding every required capability with a free slot
  (``max_concurrency`` minus the attempts they hold now), ranked by
  ``chorus.events.reliability.reliability_score`` (best first, ties by agent id: the same record
  always picks the same agent). Agents that already lost this phase's lease are passed
  over while anyone else qualifies. The ranking goes into ``PhaseAssigned.routing``.
- **Which first.** Highest priority first, oldest first within a priority; every
  ``aging_seconds`` of waiting lifts a phase one priority level, so ``low`` never starves.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chorus.engine.domain.routing import RECORDED_RUNNERS_UP
from chorus.events.session import Candidate, Routing

PRIORITY_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}


def free_slots(agent: Any, busy: Mapping[str, int]) -> int:
    return int(getattr(agent, "max_concurrency", 1)) - busy.get(agent.agent_id, 0)


def choose_agent(
    agents: Iterable[Any],
    capabilities: Collection[str],
    busy: Mapping[str, int],
    lost: Collection[str] = (),
) -> Routing | None:
    """The best qualified agent with a free slot, with the ranking; None if nobody."""
    required = frozenset(capabilities)
    qualified = [
        a
        for a in agents
        if a.status == "online" and required <= a.capabilities and free_slots(a, busy) > 0
    ]
    fresh = [a for a in qualified if a.agent_id not in lost]
    pool = fresh or qualified  # the same agent again only when nobody else can
    if not pool:
        return None
    ranked = sorted(
        (
            Candidate(agent_id=a.agent_id, score=a.score, verified=a.verified, rejected=a.rejected)
            for a in pool
        ),
        key=lambda c: (-c.score, c.agent_id),
    )
    return Routing(
        capabilities=sorted(required),
        size=1,
        candidates=ranked[: 1 + RECORDED_RUNNERS_UP],
        chosen=[ranked[0].agent_id],
        eligible=len(ranked),
    )


@dataclass(frozen=True)
class Waiting:
    """A phase ready to be assigned: since when it waits, and at which priority."""

    workflow_id: str
    priority: str
    since: datetime
    position: int  # log position it became ready at: the tie-breaker


def effective_rank(item: Waiting, now: datetime, aging_seconds: float) -> int:
    """Its priority rank (critical 0 ... low 3), lowered by one per ``aging_seconds``
    waited: a ``low`` phase that waited three periods ranks with a fresh ``critical`` one,
    and beyond that ahead of it."""
    waited = max(0.0, (now - item.since).total_seconds())
    lift = int(waited // aging_seconds) if aging_seconds > 0 else 0
    return PRIORITY_RANK.get(item.priority, 2) - lift


def in_order(items: Iterable[Waiting], now: datetime, aging_seconds: float) -> list[Waiting]:
    """Highest (aged) priority first, then oldest first."""
    return sorted(items, key=lambda w: (effective_rank(w, now, aging_seconds), w.since, w.position))
