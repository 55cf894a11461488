"""The command envelope and the reply every command gets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from chorus.contracts.errors import ErrorInfo
from msgspec import Meta, Struct

P = TypeVar("P")

CommandId = Annotated[str, Meta(min_length=1, max_length=200)]
#: Correlation and causation ids: opaque to the engine, copied into every event.
TraceId = Annotated[str, Meta(min_length=1, max_length=200)]


class Envelope(Struct, Generic[P], kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What a client publishes as the body of a command request.

    ``command_id`` is chosen by the client: re-sending the same id (from the same actor)
    at any later time is answered ``duplicate`` with the original outcome, never applied twice.
    """

    command_id: CommandId
    payload: P
    correlation_id: TraceId | None = None
    causation_id: TraceId | None = None
    issued_at: datetime | None = None


Status = Literal["accepted", "rejected", "duplicate"]


class Reply(Struct, kw_only=True, frozen=True):
    """The engine's answer on the request's reply subject.

    ``position`` is the global log position of the last event the command caused (0 when
    none): a reader can wait for a projection to reach it to read its own write.
    """

    command_id: str
    status: Status
    aggregate_id: str | None = None
    version: int | None = None
    error: ErrorInfo | None = None
    position: int = 0
