"""An aggregate's recorded history as a page, shared by every resource that has one."""

from __future__ import annotations

from msgspec import Struct

from contracts.feed import EventRecord
from gateway.errors import Problem
from gateway.state import Services


class EventPage(Struct, kw_only=True):
    items: list[EventRecord]
    next_after_version: int | None


async def history_page(
    services: Services, aggregate: str, aggregate_id: str, after_version: int, limit: int
) -> EventPage:
    """Oldest first, paged by version; 404 ``<aggregate>_not_found`` if it never existed."""
    records = await services.read_history(
        aggregate, aggregate_id, after_version=after_version, limit=limit
    )
    if not records and (
        after_version == 0 or not await services.read_history(aggregate, aggregate_id, limit=1)
    ):
        raise Problem(404, f"{aggregate}_not_found", f"{aggregate} {aggregate_id} does not exist")
    return EventPage(
        items=records,
        next_after_version=records[-1].version if len(records) == limit else None,
    )
