"""Events of the CoordinationSession aggregate: past-tense facts, never edited."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from chorus.contracts.agents import result_hash
from chorus.contracts.sessions import Task
from msgspec import Struct


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
    """Schema version 2 added ``result_digest``; version 1 events get it by upcasting."""

    agent_id: str
    result: dict[str, Any]
    success: bool
    output_hash: str | None = None
    #: ``sha256:<hex>`` of the result's canonical JSON, computed by the engine: what the
    #: agent *returned*, as opposed to ``output_hash``, what it *claims* to have produced.
    #: Auditors compare results across agents and bundles by it without reading them.
    result_digest: str | None = None
    #: When the engine recorded it: a completion claim cannot be later than this.
    submitted_at: datetime | None = None


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


class TaskAccepted(Struct, kw_only=True, frozen=True):
    """A participant acknowledged its session task: the engine stops re-sending it."""

    agent_id: str
    accepted_at: datetime


def result_digest(result: dict[str, Any]) -> str:
    """The digest of a result: the same for equal results, whatever their key order.
    It is the hash an agent proves its completion with (``chorus.contracts.agents.result_hash``)."""
    return result_hash(result)


def upcast_result_submitted_v1(data: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: derive ``result_digest`` from the recorded result."""
    return {**data, "result_digest": result_digest(data["result"])}


#: Every event of the CoordinationSession aggregate: a union tagged by the record's ``type``.
SessionEvent = (
    SessionOpened
    | ResultSubmitted
    | SessionFinalised
    | SessionTimedOut
    | SessionCancelled
    | ParticipantLost
    | ParticipantReplaced
    | TaskAccepted
)

#: Every session event class by its type name (the stored ``type`` field).
SESSION_EVENTS: dict[str, type[Struct]] = {cls.__name__: cls for cls in get_args(SessionEvent)}
