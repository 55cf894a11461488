"""Events of the CoordinationSession aggregate: past-tense facts, never edited."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

import msgspec
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
    """Schema version 2 added ``result_digest``; version 1 events get it by upcasting."""

    agent_id: str
    result: dict[str, Any]
    success: bool
    output_hash: str | None = None
    #: ``sha256:<hex>`` of the result's canonical JSON, computed by the engine: what the
    #: agent *returned*, as opposed to ``output_hash``, what it *claims* to have produced.
    #: Auditors compare results across agents and bundles by it without reading them.
    result_digest: str | None = None


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


_canonical = msgspec.json.Encoder(order="sorted")


def result_digest(result: dict[str, Any]) -> str:
    """The digest of a result: the same for equal results, whatever their key order."""
    return "sha256:" + hashlib.sha256(_canonical.encode(result)).hexdigest()


def upcast_result_submitted_v1(data: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: derive ``result_digest`` from the recorded result."""
    return {**data, "result_digest": result_digest(data["result"])}


SessionEvent = (
    SessionOpened | ResultSubmitted | SessionFinalised | SessionTimedOut | SessionCancelled
)

#: Every session event class by its type name (the stored ``type`` field).
SESSION_EVENTS: dict[str, type[Struct]] = {
    cls.__name__: cls
    for cls in (SessionOpened, ResultSubmitted, SessionFinalised, SessionTimedOut, SessionCancelled)
}
