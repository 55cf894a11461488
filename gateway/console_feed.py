"""``WS /api/v1/events/feed``: the global event log, live, for the console and dashboards.

An ordered JetStream consumer on every event subject: ``?tail=N`` starts with the last N
events of the stream (default 50, at most 1000), ``?since=<position>`` instead replays
everything after that position; then live, with nothing shown twice (records carry their
position and anything at or below the last one sent is skipped, as in the other feeds).

What a role sees: auditors and admins read the record, so they get each event whole (the
record of ``GET /api/v1/events``). Other roles get a notice without ``data`` or
``actor`` (``{"type": "event", "position", "aggregate", "aggregate_id", "event",
"version", "occurred_at"}``): enough to know what changed and to read it through the REST
API, which applies that role's rules. Client messages are those of the other feeds
(``ping``).
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

from chorus.contracts.subjects import EVENTS_STREAM, EVT_PREFIX
from chorus.gateway.auth import AUDITORS, can_read
from chorus.gateway.fanout import DATA_HEADER, POSITION_HEADER, Frame, Positions
from chorus.gateway.feeds import Feed, pump_and_listen, resolve
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services, ServicesDep
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import QueryParameter
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

#: The fields a notice keeps from an event record.
NOTICE_FIELDS = ("position", "aggregate", "aggregate_id", "version", "occurred_at")


def notice(record: dict[str, Any]) -> dict[str, Any]:
    """What a non-auditor sees of an event: that it happened, not what it says."""
    return {
        "type": "event",
        "event": record.get("type"),
        **{k: record.get(k) for k in NOTICE_FIELDS},
    }


class LogFeed(Feed):
    """The whole EVENTS stream, whole records or notices depending on the role, from a
    consumer of the socket's own (its start depends on ``tail`` or ``since``)."""

    def __init__(
        self, socket: WebSocket[Any, Any, Any], services: Services, since: int,
        sub: JetStreamContext.PushSubscription, whole: bool,
    ) -> None:  # fmt: skip
        super().__init__(socket, services, "event", ">", since)
        self.sub = sub
        self.whole = whole
        self.positions = Positions(services.history.head)

    async def pump(self) -> None:
        async for msg in self.sub.messages:
            headers = msg.headers or {}
            position = await self.positions.of(headers.get(POSITION_HEADER, "0"))
            if position <= self.last:
                continue  # seen already, or not written by the relay
            frame = Frame(position, msg.subject, msg.data, headers.get(DATA_HEADER) == "omitted")
            if self.whole:  # an event too large for the stream is read from the store
                await self.send(
                    frame.text if not frame.omitted else await resolve(self.services, frame)
                )
            else:
                try:
                    shown = notice(json.loads(frame.data))
                except (ValueError, AttributeError):
                    continue
                await self.send(json.dumps(shown | {"position": position}))
            self.last = position


@websocket("/api/v1/events/feed", guards=[can_read])
async def events_feed(
    socket: WebSocket[Principal, Any, Any],
    services: ServicesDep,
    since: Annotated[int | None, QueryParameter(ge=0)] = None,
    tail: Annotated[int, QueryParameter(ge=0, le=1000)] = 50,
) -> None:
    await socket.accept()
    js = services.nc.jetstream()
    if since is None:
        info = await js.stream_info(EVENTS_STREAM)
        start = max(info.state.first_seq, info.state.last_seq - tail + 1, 1)
        sub = await js.subscribe(
            f"{EVT_PREFIX}.>", ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            ),
        )  # fmt: skip
    else:
        sub = await js.subscribe(
            f"{EVT_PREFIX}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
    feed = LogFeed(socket, services, since or 0, sub, whole=socket.user.role in AUDITORS)
    try:
        with contextlib.suppress(WebSocketDisconnect):
            await pump_and_listen(feed.pump(), feed.listen())
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
