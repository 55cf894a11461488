"""Events of the CoordinationSession aggregate: past-tense facts, never edited."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from msgspec import Struct

from contracts.sessions import Task


class SessionOpened(Struct, kw_only=True, frozen=True):
    session_id: str
    coordinator_id: str
    opened_by: str
    participants: list[str]
    task: Task
    timeout_seconds: int
    deadline: datetime


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


SessionEvent = (
    SessionOpened | ResultSubmitted | SessionFinalised | SessionTimedOut | SessionCancelled
)

#: Every session event class by its type name (the stored ``type`` field).
SESSION_EVENTS: dict[str, type[Struct]] = {
    cls.__name__: cls
    for cls in (SessionOpened, ResultSubmitted, SessionFinalised, SessionTimedOut, SessionCancelled)
}
