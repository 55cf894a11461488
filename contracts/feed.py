"""The event record as published on ``chorus.evt.>`` and served by feeds and history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from msgspec import Struct


class EventRecord(Struct, kw_only=True, frozen=True):
    """One recorded fact.

    ``position`` is global and gap-free per store; ``version`` counts the aggregate's own
    events from 1. ``hash`` chains to ``prev_hash``, the hash of the aggregate's previous
    event, so any edit of the history is detectable.
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
