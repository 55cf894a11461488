"""Command payloads for coordination sessions (``chorus.cmd.<actor>.session.<command>``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

Id = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-:@]{1,128}$")]
SessionId = Annotated[
    str,
    Meta(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        description="A UUID chosen by the opener",
    ),
]
Require = Literal["all", "majority", "any"]


class Criteria(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How a finished session's results are judged.

    ``min_results`` successful results are needed, and ``require`` of all submitted results
    must have succeeded. With ``agree_on="output_hash"`` only successful results that carry
    the most common output hash count as successful.
    """

    min_results: Annotated[int, Meta(ge=1, le=1000)] = 1
    require: Require = "all"
    agree_on: Literal["output_hash"] | None = None


class Task(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    description: Annotated[str, Meta(min_length=1, max_length=10_000)]
    criteria: Criteria = Criteria()


Capability = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,63}$")]
#: A tool of a registered MCP server, ``<server>/<tool>`` (short enough to be a capability).
ToolRef = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_\-]*/[A-Za-z0-9_\-.]+$", max_length=59)]


def with_tools(capabilities: list[str], tools: list[str]) -> list[str]:
    """``capabilities`` and ``tool:<server>/<tool>`` for each required tool, once each: an
    agent that can use a tool holds that capability, so requiring a tool routes (sessions,
    dispatched phases, replacements) exactly like requiring a capability."""
    return list(dict.fromkeys([*capabilities, *(f"tool:{t}" for t in tools)]))


def require_tools(struct: Any) -> None:
    """Fold a frozen struct's ``requires_tools`` into its ``capabilities`` (at decode)."""
    if struct.requires_tools:
        msgspec.structs.force_setattr(
            struct, "capabilities", with_tools(struct.capabilities, struct.requires_tools)
        )


#: What a session does when a participant goes offline before submitting.
LostPolicy = Literal["wait", "fail_fast", "replace"]


class SessionRequest(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Open a coordination session. ``coordinator_id`` defaults to the actor.

    Name the ``participants``, or let the engine route: ``size`` online agents that have
    every one of ``capabilities``, the most reliable first (the candidates and their
    scores are recorded in ``SessionOpened``). ``capabilities`` also bound who may
    replace a lost participant under ``on_participant_lost="replace"``.

    The fields a caller chooses: the bus command ``OpenSession`` adds the session's id and
    the HTTP body lets the gateway derive it, both from this one declaration (so the two
    edges cannot drift apart).
    """

    task: Task
    participants: Annotated[list[Id], Meta(max_length=1000)] = []
    capabilities: Annotated[list[Capability], Meta(max_length=100)] = []
    size: Annotated[int, Meta(ge=1, le=1000)] | None = None
    on_participant_lost: LostPolicy = "wait"
    timeout_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 600
    coordinator_id: Id | None = None
    #: Tools (``<server>/<tool>``) every routed participant must be able to use: added to
    #: ``capabilities`` as ``tool:<server>/<tool>``.
    requires_tools: Annotated[list[ToolRef], Meta(max_length=100)] = []

    def __post_init__(self) -> None:
        require_tools(self)
        if self.participants and self.size is not None:
            raise ValueError("name participants or give a size to route by, not both")
        if not self.participants and self.size is None:
            raise ValueError("name participants, or give size (and capabilities) to route by")


class OpenSession(SessionRequest, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Open a coordination session (see ``SessionRequest``) under the id ``session_id``."""

    session_id: SessionId


class ResultRequest(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A participant's result. ``output_hash`` lets criteria compare outputs."""

    result: dict[str, Any]
    success: bool = True
    output_hash: Annotated[str, Meta(max_length=200)] | None = None


class SubmitResult(ResultRequest, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A participant's result (see ``ResultRequest``) for the session ``session_id``."""

    session_id: SessionId


class Cancellation(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Why a session or workflow is cancelled (the body of both cancel requests)."""

    reason: Annotated[str, Meta(min_length=1, max_length=2000)] = "cancelled"


class CancelSession(Cancellation, kw_only=True, frozen=True, forbid_unknown_fields=True):
    session_id: SessionId


class TimeOutSession(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Issued by the engine's own timer when a session passes its deadline."""

    session_id: SessionId


class ReportParticipantLost(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Issued by the engine when a participant that has not submitted goes offline."""

    session_id: SessionId
    agent_id: Id
    reason: Annotated[str, Meta(min_length=1, max_length=2000)] = "agent went offline"
    #: Asked again because a new candidate turned up: record nothing if none qualifies.
    retry: bool = False


#: command token -> payload type, for ``chorus.cmd.<actor>.session.<command>``.
SESSION_COMMANDS: dict[str, type[Struct]] = {
    "open": OpenSession,
    "submit_result": SubmitResult,
    "cancel": CancelSession,
    "timeout": TimeOutSession,
    "participant_lost": ReportParticipantLost,
}
