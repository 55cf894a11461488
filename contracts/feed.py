"""The event record as published on ``chorus.evt.>`` and served by feeds and history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from msgspec import Struct

#: Turns a record's ``data`` into its event class. Installed by ``chorus.events.codec``,
#: which knows the classes: the contracts are below the events and cannot import them.
_typed: Callable[[EventRecord], Struct] | None = None


def install_event_decoder(decode: Callable[[EventRecord], Struct]) -> None:
    """Called once by ``chorus.events.codec`` on import."""
    global _typed
    _typed = decode


class EventRecord(Struct, kw_only=True, frozen=True, dict=True):
    """One recorded fact.

    ``position`` is global and gap-free per store; ``version`` counts the aggregate's own
    events from 1. ``hash`` chains to ``prev_hash``, the hash of the aggregate's previous
    event, so any edit of the history is detectable.

    ``data`` is the event's body as it travels (JSON); inside Chorus, code reads ``event``,
    the same body as its class (``chorus.events``), decoded on first use and kept with the
    record (``dict=True`` gives the frozen record room for it; it is no field, so the wire
    form does not change).
    """

    position: int
    aggregate: str
    aggregate_id: str
    version: int
    type: str
    schema_version: int
    occurred_at: datetime
    actor: str
    command_id: str
    correlation_id: str | None
    causation_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    @property
    def event(self) -> Struct:
        """The event as its class (``AgentRegistered``, ...), upcast to today's shape."""
        cached = self.__dict__.get("_event")
        if cached is None:
            if _typed is None:
                raise RuntimeError("import chorus.events.codec to read typed events")
            cached = self.__dict__["_event"] = _typed(self)
        return cached
