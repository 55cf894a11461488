"""Events of the CoordinationSession aggregate: past-tense facts, never edited."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from msgspec import Struct

from contracts.sessions import Task


class Candidate(Struct, kw_only=True, frozen=True):
    """An agent routing considered, with the score it was ranked by."""

    agent_id: str
    score: float
    verified: int
    rejected: int


class Routing(Struct, kw_only=True, frozen=True):
    """Why these participants: every eligible candidate, best first, and the rule."""

    capabilities: list[str]
    size: int
    candidates: list[Candidate]  # the best ones (all chosen, then runners-up)
    chosen: list[str]
    eligible: int  # how many agents qualified


class SessionOpened(Struct, kw_only=True, frozen=True):
    session_id: str
    coordinator_id: str
    opened_by: str
    participants: list[str]
    task: Task
    timeout_seconds: int
    deadline: datetime
    capabilities: list[str] = []
    on_participant_lost: str = "wait"
    routing: Routing | None = None


class ResultSubmitted(Struct, kw_only=True, frozen=True):
    agent_id: str
    result: dict[str, Any]
    success: bool
    output_hash: str | None = None


class Verdict(Struct, kw_only=True, frozen=True):
    """What the criteria made of a set of results (also recorded for audits)."""

    outcome: Literal["succeeded", "failed"]
    reason: str
    results: int
    succeeded: int
    agreed_hash: str | None = None


class SessionFinalised(Struct, kw_only=True, frozen=True):
    outcome: Literal["succeeded", "failed"]
    reason: str
    verdict: Verdict


class SessionTimedOut(Struct, kw_only=True, frozen=True):
    deadline: datetime
    pending: list[str]


class SessionCancelled(Struct, kw_only=True, frozen=True):
    reason: str
    cancelled_by: str


class ParticipantLost(Struct, kw_only=True, frozen=True):
    """A participant went offline before submitting; ``action`` is what the policy did:
    ``waiting`` (still expected), ``failed`` (the session fails) or ``replaced``."""

    agent_id: str
    reason: str
    action: str


class ParticipantReplaced(Struct, kw_only=True, frozen=True):
    """A lost participant's place went to another agent, chosen like routing does."""

    replaced: str
    replacement: str
    reason: str
    routing: Routing
    assigned_at: datetime


SessionEvent = (
    SessionOpened
    | ResultSubmitted
    | SessionFinalised
    | SessionTimedOut
    | SessionCancelled
    | ParticipantLost
    | ParticipantReplaced
)

#: Every session event class by its type name (the stored ``type`` field).
SESSION_EVENTS: dict[str, type[Struct]] = {
    cls.__name__: cls
    for cls in (
        SessionOpened,
        ResultSubmitted,
        SessionFinalised,
        SessionTimedOut,
        SessionCancelled,
        ParticipantLost,
        ParticipantReplaced,
    )
}
