"""Routing: which online agents get a session, ranked by their verified record.

Eligible: online (busy counts as online), holding every required capability, not
excluded. Ranked by ``chorus.events.reliability.reliability_score`` (best first), ties broken by
agent id so the same record always picks the same agents. The ranking is recorded in the
session's events, so an audit can see why each agent was chosen.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from chorus.engine.domain import errors
from chorus.events.session import Candidate, Routing

#: At most this many candidates beyond the chosen ones are recorded in an event.
RECORDED_RUNNERS_UP = 20


def route(
    agents: Iterable[Any],
    capabilities: Collection[str],
    size: int,
    exclude: Collection[str] = (),
) -> Routing:
    required = frozenset(capabilities)
    eligible = sorted(
        (
            Candidate(agent_id=a.agent_id, score=a.score, verified=a.verified, rejected=a.rejected)
            for a in agents
            if a.status == "online" and required <= a.capabilities and a.agent_id not in exclude
        ),
        key=lambda c: (-c.score, c.agent_id),
    )
    if len(eligible) < size:
        raise errors.NotEnoughAgents(
            f"{len(eligible)} online agent(s) have the capabilities {sorted(required)}; "
            f"{size} needed",
            {"found": len(eligible), "required": size, "capabilities": sorted(required)},
        )
    return Routing(
        capabilities=sorted(required),
        size=size,
        candidates=eligible[: size + RECORDED_RUNNERS_UP],
        chosen=[c.agent_id for c in eligible[:size]],
        eligible=len(eligible),
    )
