"""Live event feeds over WebSocket, served from the JetStream EVENTS stream.

``WS /api/v1/sessions/{id}/feed?since=<position>``: every event of the session after
``since``, then live ones. An ordered consumer on the session's subject replays the
stream's history and continues live in one sequence, so there is no switch-over where an
event could fall between catch-up and live. Records carry their global position and
anything at or below the last one sent is skipped, so a relay re-publish can never show
up twice.

Client messages: the text ``ping`` is answered ``pong``; anything else gets an error
message (the socket stays open).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Annotated, Any

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath, QueryParameter
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from contracts.bounds import MAX_POSITION
from contracts.subjects import event_filter
from gateway.auth import can_read
from gateway.keys import Principal
from gateway.state import Services, ServicesDep
from projections import sessions

POSITION_HEADER = "Chorus-Position"
DATA_HEADER = "Chorus-Data"
_encoder = msgspec.json.Encoder()
CLOSE_NOT_FOUND = 4404


class Positions:
    """Reads a message's ``Chorus-Position``, distrusting what the relay cannot have
    written: an unreadable one, or one beyond the event store's head, reads as 0 (skipped).
    A forged message with a huge position would otherwise hide every later event."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.head = 0

    async def of(self, msg: Any) -> int:
        try:
            position = int((msg.headers or {}).get(POSITION_HEADER, "0"))
        except ValueError:
            return 0
        if position > self.head:  # new to us: the store must have it already
            self.head = await asyncio.to_thread(self.services.history.head)
            if position > self.head:
                return 0
        return position


class Feed:
    """One WebSocket fed from one ordered JetStream consumer."""

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        services: Services,
        since: int,
        transform: Callable[[str], str] | None = None,
    ) -> None:
        self.socket = socket
        self.services = services
        self.last = since
        #: Rewrites each record before it is sent (hides what the viewer may not see).
        self.transform = transform
        self.positions = Positions(services)
        self._send_lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        async with self._send_lock:
            await self.socket.send_text(text)

    async def pump(self, sub: JetStreamContext.PushSubscription) -> None:
        async for msg in sub.messages:
            position = await self.positions.of(msg)
            if position <= self.last:
                continue
            text = await resolve(self.services, msg)
            await self.send(self.transform(text) if self.transform else text)
            self.last = position

    async def listen(self) -> None:
        while True:
            text = await self.socket.receive_text()
            if text.strip().lower() == "ping":
                await self.send("pong")
            else:
                await self.send(
                    json.dumps(
                        {
                            "type": "error",
                            "code": "unknown_message",
                            "message": "send the text 'ping' to check the connection; "
                            "nothing else is understood on this feed",
                        }
                    )
                )

    async def serve(self, subject: str) -> None:
        # Subscribe before any task exists, so no cancellation can land inside it.
        js = self.services.nc.jetstream()
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            await pump_and_listen(self.pump(sub), self.listen())
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def resolve(services: Services, msg: Any) -> str:
    """The message's record as JSON text; a reference (an event too large to publish,
    marked ``Chorus-Data: omitted``) is read whole from the event store."""
    if (msg.headers or {}).get(DATA_HEADER) != "omitted":
        return str(msg.data.decode())
    try:
        ref = json.loads(msg.data)
        found = await services.read_history(
            ref["aggregate"], ref["aggregate_id"], after_version=int(ref["version"]) - 1, limit=1
        )
    except (ValueError, KeyError, TypeError):
        found = []  # not a reference the relay wrote: pass it on as it is
    return _encoder.encode(found[0]).decode() if found else msg.data.decode(errors="replace")


async def pump_and_listen(
    pump: Coroutine[Any, Any, None],
    listen: Coroutine[Any, Any, None],
    also: Callable[[], Iterable[asyncio.Task[None]]] = tuple,
) -> None:
    """Run a socket's event pump and its client listener side by side until either ends
    (a disconnect is the normal end; any other error is raised), then stop both, and the
    tasks ``also`` names (e.g. health checks in flight)."""
    pumping = asyncio.create_task(pump)
    listening = asyncio.create_task(listen)
    try:
        done, _ = await asyncio.wait({pumping, listening}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, WebSocketDisconnect):
                raise error
    finally:
        await _stop(pumping, listening, *also())


async def _stop(*tasks: asyncio.Task[None]) -> None:
    """Cancel until done: a cancel can be lost inside library code (see contracts.aio)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a disconnect is the normal end of a feed


async def serve_feed(
    socket: WebSocket[Any, Any, Any], services: Services, aggregate: str, aggregate_id: str,
    since: int, transform: Callable[[str], str] | None = None,
) -> None:  # fmt: skip
    """Accept, check the aggregate exists (close 4404 if not), then feed it."""
    await socket.accept()
    if not await services.read_history(aggregate, aggregate_id, limit=1):
        code = f"{aggregate}_not_found"
        await socket.send_text(
            json.dumps({"type": "error", "code": code,
                        "message": f"{aggregate} {aggregate_id} does not exist"})
        )  # fmt: skip
        await socket.close(code=CLOSE_NOT_FOUND, reason=code)
        return
    with contextlib.suppress(WebSocketDisconnect):
        await Feed(socket, services, since, transform).serve(event_filter(aggregate, aggregate_id))


@websocket("/api/v1/sessions/{session_id:uuid}/feed", guards=[can_read])
async def session_feed(
    socket: WebSocket[Any, Any, Any],
    session_id: FromPath[uuid.UUID],
    services: ServicesDep,
    since: Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)] = 0,
) -> None:
    principal: Principal = socket.user
    view = await services.read(sessions.get_session, str(session_id))
    transform = None
    if view is not None and not sessions.sees_all_results(view, principal.actor, principal.role):
        # A participant must not read the others' results live either (they could be
        # copied); it reads them from the session once it closed.
        def transform(text: str) -> str:
            return json.dumps(sessions.hide_others_result(json.loads(text), principal.actor))

    await serve_feed(socket, services, "session", str(session_id), since, transform)


@websocket("/api/v1/workflows/{workflow_id:uuid}/feed", guards=[can_read])
async def workflow_feed(
    socket: WebSocket[Any, Any, Any],
    workflow_id: FromPath[uuid.UUID],
    services: ServicesDep,
    since: Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)] = 0,
) -> None:
    await serve_feed(socket, services, "workflow", str(workflow_id), since)
