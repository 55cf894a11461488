"""Command payloads for coordination sessions (``chorus.cmd.<actor>.session.<command>``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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


class OpenSession(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Open a coordination session. ``coordinator_id`` defaults to the actor."""

    session_id: SessionId
    participants: Annotated[list[Id], Meta(min_length=1, max_length=1000)]
    task: Task
    timeout_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 600
    coordinator_id: Id | None = None


class SubmitResult(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A participant's result. ``output_hash`` lets criteria compare outputs."""

    session_id: SessionId
    result: dict[str, Any]
    success: bool = True
    output_hash: Annotated[str, Meta(max_length=200)] | None = None


class CancelSession(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    session_id: SessionId
    reason: Annotated[str, Meta(min_length=1, max_length=2000)] = "cancelled"


class TimeOutSession(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Issued by the engine's own timer when a session passes its deadline."""

    session_id: SessionId


#: command token -> payload type, for ``chorus.cmd.<actor>.session.<command>``.
SESSION_COMMANDS: dict[str, type[Struct]] = {
    "open": OpenSession,
    "submit_result": SubmitResult,
    "cancel": CancelSession,
    "timeout": TimeOutSession,
}
