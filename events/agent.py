"""Events of the Agent aggregate: registration, liveness transitions, verified evidence.

Heartbeats are not events: only the transitions they cause (``AgentCameOnline``,
``AgentWentOffline``) are recorded, so a fleet beating every second does not grow the log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

from msgspec import Struct


class AgentRegistered(Struct, kw_only=True, frozen=True):
    agent_id: str
    type: str
    capabilities: list[str]
    metadata: dict[str, Any]
    owner: str
    registered_at: datetime
    #: How many workflow phases the dispatcher may give it at once.
    max_concurrency: int = 1


class AgentConcurrencyChanged(Struct, kw_only=True, frozen=True):
    """Registered again with another ``max_concurrency``."""

    max_concurrency: int


class AgentCapabilitiesUpdated(Struct, kw_only=True, frozen=True):
    capabilities: list[str]
    updated_by: str


class AgentRetired(Struct, kw_only=True, frozen=True):
    reason: str
    retired_by: str


class AgentCameOnline(Struct, kw_only=True, frozen=True):
    last_seen: datetime


class AgentWentOffline(Struct, kw_only=True, frozen=True):
    last_seen: datetime
    missed_heartbeats: int


class Rejection(Struct, kw_only=True, frozen=True):
    """One failed check of a completion claim."""

    code: str
    message: str


class CitedToolCall(Struct, kw_only=True, frozen=True):
    """A ``ToolCalled`` event (server, version on its aggregate) that backed a verdict."""

    server: str
    version: int
    result_digest: str | None = None


class CompletionVerified(Struct, kw_only=True, frozen=True):
    """The evidence matched the record. ``quality_score`` in [0, 1], see engine/domain/evidence.py.

    ``counts`` is False for a task the agent (or a partner) could have arranged for
    itself: the verdict is recorded but does not move its reliability (see
    ``chorus.events.reliability``)."""

    task_id: str
    task_kind: str  # session | phase
    completion_time: datetime
    output_hash: str
    assigned_at: datetime
    response_time: float
    quality_score: float
    score_parts: dict[str, float]
    counts: bool = True
    #: The tool calls on record that the evidence cited, each checked (engine/domain/evidence.py).
    tool_calls: list[CitedToolCall] = []


class CompletionRejected(Struct, kw_only=True, frozen=True):
    """The evidence did not hold; every failed check is listed. Quality is 0."""

    task_id: str
    completion_time: datetime
    output_hash: str
    reasons: list[Rejection]
    response_time: float | None = None
    quality_score: float = 0.0
    counts: bool = True  # as for CompletionVerified


class TaskLeaseLost(Struct, kw_only=True, frozen=True):
    """The agent lost the lease of a task it was given: it counts as a rejected completion
    in its reliability (the engine had to give the work to someone else)."""

    task_id: str
    attempt: int
    reason: str
    lost_at: datetime


#: Every event of the Agent aggregate: a union tagged by the record's ``type`` (the class name).
AgentEvent = (
    AgentRegistered
    | AgentCapabilitiesUpdated
    | AgentRetired
    | AgentCameOnline
    | AgentWentOffline
    | CompletionVerified
    | CompletionRejected
    | AgentConcurrencyChanged
    | TaskLeaseLost
)
AGENT_EVENTS: dict[str, type[Struct]] = {cls.__name__: cls for cls in get_args(AgentEvent)}
