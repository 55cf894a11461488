"""``WS /api/v1/events/feed``: the global event log, live, for the console and dashboards.

``?tail=N`` starts with the last N events of the log (default 50, at most 1000),
``?since=<position>`` instead with everything after that position; then live, with
nothing shown twice (records carry their position and anything at or below the last one
sent is skipped, as in the other feeds).

The same machinery as the session and workflow feeds (``chorus.gateway.feeds``): every
events-feed socket shares the gateway's one channel on all event subjects
(``chorus.gateway.fanout``; the agents feed uses that channel too), joins it before
reading what it missed from the event store, so nothing falls between the two, and is
dropped back to catch-up from its own position when it falls too far behind. A socket
used to have its own JetStream consumer, and ``since`` replayed the whole stream to skip
to its position: every connect cost a consumer and a read of the stream.

What a role sees: auditors and admins read the record, so they get each event whole (the
record of ``GET /api/v1/events``). Other roles get a notice without ``data`` or
``actor`` (``{"type": "event", "event", "position", "aggregate", "aggregate_id",
"version", "occurred_at"}``): enough to know what changed and to read it through the REST
API, which applies that role's rules. Each live event's notice is made and encoded once
for every socket that shows it (``Frame.view``), as its whole record is. Client messages
are those of the other feeds (``ping``).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Annotated, Any

import msgspec
from chorus.contracts.bounds import MAX_POSITION
from chorus.contracts.feed import EventRecord
from chorus.contracts.subjects import EVT_PREFIX
from chorus.gateway.auth import AUDITORS, can_read
from chorus.gateway.fanout import Frame
from chorus.gateway.feeds import CATCH_UP_PAGE, Feed
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services, ServicesDep
from chorus.projections.audit import LogFilter
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import QueryParameter

#: Every event of the log (the feed filters nothing but the role's view).
EVERYTHING = LogFilter()
#: The channel's subject: every event.
SUBJECT = f"{EVT_PREFIX}.>"
#: The name of the notice view of a frame (``Frame.view``).
NOTICE = "notice"


class Notice(msgspec.Struct, kw_only=True):
    """What a non-auditor sees of an event: that it happened, not what it says."""

    type: str = "event"
    event: str
    position: int
    aggregate: str
    aggregate_id: str
    version: int
    occurred_at: datetime


class _Noticed(msgspec.Struct):
    """The fields of a published record (or of the reference to one too large to publish)
    that a notice keeps: decoding only these passes over the event's data."""

    aggregate: str
    aggregate_id: str
    version: int
    type: str
    occurred_at: datetime


_encoder = msgspec.json.Encoder()
_noticed = msgspec.json.Decoder(_Noticed)


def notice(seen: EventRecord | _Noticed, position: int) -> Notice:
    """The notice of a stored record, or of a published one decoded as ``_Noticed``."""
    return Notice(
        event=seen.type, position=position, aggregate=seen.aggregate,
        aggregate_id=seen.aggregate_id, version=seen.version, occurred_at=seen.occurred_at,
    )  # fmt: skip


def notice_of(frame: Frame) -> bytes | None:
    """A live event's notice (None if the message is no record the relay wrote). Its
    position is the message's, which the channel checked against the store."""
    try:
        seen = _noticed.decode(frame.data)
    except msgspec.DecodeError:
        return None
    return _encoder.encode(notice(seen, frame.position))


def tail_start(services: Services, count: int) -> int:
    """The position just before the log's last ``count`` events (blocking). The log also
    holds bookkeeping rows the feed never shows, so it reads back in growing windows from
    the head rather than by arithmetic on positions."""
    head = services.history.head()
    if count == 0:
        return head
    window = 2 * count
    while True:
        after = max(0, head - window)
        positions = [
            r.position for chunk in services.audit.stream(after, EVERYTHING) for r in chunk
        ]
        if len(positions) >= count:
            return positions[-count] - 1
        if after == 0:
            return 0
        window *= 4


class LogFeed(Feed):
    """One socket on the whole log: whole records or notices depending on the role."""

    def __init__(
        self, socket: WebSocket[Any, Any, Any], services: Services, since: int | None,
        tail: int, whole: bool,
    ) -> None:  # fmt: skip
        super().__init__(socket, services, "event", ">", since or 0)
        self.subject = SUBJECT
        self.whole = whole
        #: Start with the last ``tail`` events (when no ``since`` was given).
        self.tail = tail if since is None else None

    def shown(self, frame: Frame) -> Frame | None:
        return frame if self.whole else frame.view(NOTICE, notice_of)

    def text_of(self, record: EventRecord) -> str:
        return _encoder.encode(record if self.whole else notice(record, record.position)).decode()

    async def catch_up(self) -> None:
        """Send what the store's log holds after the last position sent, page by page
        (first finding where the tail starts, on the socket's first catch-up)."""
        if self.tail is not None:
            self.last = await asyncio.to_thread(tail_start, self.services, self.tail)
            self.tail = None
        while True:
            page = await asyncio.to_thread(
                self.services.audit.page, self.last, CATCH_UP_PAGE, EVERYTHING
            )
            await self.send_records([self.text_of(r) for r in page.items], page.next_after)
            if not page.more:
                return


@websocket("/api/v1/events/feed", guards=[can_read])
async def events_feed(
    socket: WebSocket[Principal, Any, Any],
    services: ServicesDep,
    since: Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)] = None,
    tail: Annotated[int, QueryParameter(ge=0, le=1000)] = 50,
) -> None:
    await socket.accept()
    feed = LogFeed(socket, services, since, tail, whole=socket.user.role in AUDITORS)
    with contextlib.suppress(WebSocketDisconnect):
        await feed.serve()
