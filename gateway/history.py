"""An aggregate's recorded history as a page, and its state at a past point, shared by
every resource that has them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from chorus.contracts.bounds import MAX_POSITION
from chorus.contracts.feed import EventRecord
from chorus.gateway.auth import check_auditor
from chorus.gateway.errors import Problem
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services
from chorus.projections.timetravel import state_at
from litestar.params import QueryParameter
from msgspec import Struct

T = TypeVar("T")


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


def parse_time(field: str, value: str | None) -> datetime | None:
    """An RFC 3339 time with its UTC offset; 400 ``invalid_parameter`` otherwise."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise Problem(
            400, "invalid_parameter",
            f"{field} must be an RFC 3339 time with an offset, e.g. 2030-01-01T12:00:00Z",
            details={"field": field, "value": value},
        )  # fmt: skip
    return parsed


#: The query parameters that ask for a past state (``as_of`` is an RFC 3339 time).
AtVersion = Annotated[int | None, QueryParameter(ge=1, le=MAX_POSITION)]


async def current_or_past(
    principal: Principal,
    services: Services,
    aggregate: str,
    aggregate_id: str,
    at_version: int | None,
    as_of: str | None,
    current: Callable[[], Awaitable[T]],
) -> T:
    """The current view from the read model, or, when ``at_version`` or ``as_of`` is
    given, the view at that point folded from history (auditors and admins)."""
    if at_version is None and as_of is None:
        return await current()
    view: T = await past_view(principal, services, aggregate, aggregate_id, at_version, as_of)
    return view


async def past_view(
    principal: Principal,
    services: Services,
    aggregate: str,
    aggregate_id: str,
    at_version: int | None,
    as_of: str | None,
) -> Any:
    """The view at ``at_version`` or ``as_of``, folded from history (auditors and admins)."""
    check_auditor(principal)
    if at_version is not None and as_of is not None:
        raise Problem(
            400, "invalid_parameter", "give at_version or as_of, not both",
            details={"fields": ["at_version", "as_of"]},
        )  # fmt: skip
    moment = parse_time("as_of", as_of)
    past = await asyncio.to_thread(
        state_at, services.history, aggregate, aggregate_id, at_version=at_version, as_of=moment
    )
    if past is None:
        raise Problem(404, f"{aggregate}_not_found", f"{aggregate} {aggregate_id} does not exist")
    if at_version is not None and at_version > past.current_version:
        raise Problem(
            404, "version_not_found",
            f"{aggregate} {aggregate_id} has {past.current_version} versions, not {at_version}",
            details={"current_version": past.current_version},
        )  # fmt: skip
    if past.view is None:
        raise Problem(
            404, f"{aggregate}_not_found",
            f"{aggregate} {aggregate_id} did not exist yet at {as_of}",
            details={"as_of": as_of},
        )  # fmt: skip
    return past.view
