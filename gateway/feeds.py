"""Live event feeds over WebSocket: what the store holds after a position, then live.

``WS /api/v1/sessions/{id}/feed?since=<position>``: every event of the session after
``since``, then live ones. The socket first joins the gateway's shared channel for the
session's subject (``chorus.gateway.fanout``: one upstream subscription however many sockets
watch it), then reads what it missed from the event store, then sends what the channel
delivered. Joining before reading leaves no switch-over where an event could fall
between catch-up and live; records carry their global position and anything at or below
the last one sent is skipped, so an event met twice (in the store and live, or a relay
re-publish) is sent once.

A socket that cannot keep up never slows the others: when its queue of live events is
full it is dropped back to catch-up from its own position, from the store.

Served by the gateway's own server (``chorus.gateway.server``), a socket writes whole
frames itself: each live event's frame is encoded once for all sockets and, while the
socket keeps up, written to it from the channel's task as it arrives (``Feed.deliver``);
catch-up pages and queued events go out in one write per batch. Elsewhere (another ASGI
server, the test client) each record is sent through ``send_text``. The bytes on the wire
are the same text messages either way.

Client messages: the text ``ping`` is answered ``pong``; anything else gets an error
message (the socket stays open).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Annotated, Any

import msgspec
from chorus.contracts.bounds import MAX_POSITION
from chorus.contracts.subjects import event_filter
from chorus.gateway.auth import can_read
from chorus.gateway.fanout import POSITION_HEADER, Frame, Listener, frame_writer, text_frame
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services, ServicesDep
from chorus.projections import sessions
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath, QueryParameter

__all__ = ["POSITION_HEADER", "pump_and_listen", "serve_feed"]

CLOSE_NOT_FOUND = 4404
#: Events read from the store per query while catching up.
CATCH_UP_PAGE = 500

_encoder = msgspec.json.Encoder()


class Feed:
    """One WebSocket on one aggregate: catch-up from the store, then the shared channel."""

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        services: Services,
        aggregate: str,
        aggregate_id: str,
        since: int,
        transform: Callable[[str], str] | None = None,
    ) -> None:
        self.socket = socket
        self.services = services
        self.aggregate = aggregate
        self.aggregate_id = aggregate_id
        #: The shared channel's subject (the events feed's is every event).
        self.subject = event_filter(aggregate, aggregate_id)
        self.last = since
        #: Rewrites each record before it is sent (hides what the viewer may not see).
        self.transform = transform
        self.writer = frame_writer(socket.scope)
        self._send_lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        async with self._send_lock:
            await self.socket.send_text(text)

    async def send_record(self, text: str) -> None:
        await self.send(self.transform(text) if self.transform else text)

    async def send_records(self, texts: list[str], last: int) -> None:
        """Send these records (JSON text, before ``transform``) in order: in one write if
        the server gives the socket a frame writer. Then ``last`` is the last position sent."""
        writer = self.writer
        if writer is None:
            for text in texts:
                await self.send_record(text)
        elif texts:
            data = b"".join(self.wire_of(text) for text in texts)
            async with self._send_lock:
                if not await writer.drain():
                    raise WebSocketDisconnect(detail="the socket closed", code=1006)
                writer.write(data)
        self.last = last

    def wire_of(self, text: str) -> bytes:
        return text_frame((self.transform(text) if self.transform else text).encode())

    async def catch_up(self) -> None:
        """Send what the store holds after the last position sent, page by page."""
        while True:
            records = await self.services.read_history(
                self.aggregate, self.aggregate_id, after_position=self.last,
                limit=CATCH_UP_PAGE,
            )  # fmt: skip
            if records:
                texts = [_encoder.encode(record).decode() for record in records]
                await self.send_records(texts, records[-1].position)
            if len(records) < CATCH_UP_PAGE:
                return

    def shown(self, frame: Frame) -> Frame | None:
        """The frame as this socket shows it (before ``transform``), or None to pass it
        over; one still ``omitted`` is read whole from the store."""
        return frame

    async def send_frames(self, frames: Sequence[Frame]) -> None:
        """Frames from the channel, in order, skipping any at or below the last position
        sent (met in the store already, or re-published)."""
        texts: list[str] = []
        last = self.last
        for frame in frames:
            if frame.position > last:
                shown = self.shown(frame)
                if shown is not None:
                    texts.append(
                        shown.text if not shown.omitted else await resolve(self.services, shown)
                    )
                last = frame.position
        await self.send_records(texts, last)

    def deliver(self, frames: Sequence[Frame]) -> bool:
        """``Listener.direct``: write the new frames at once (each encoded once for every
        socket) if the socket can take them now; False leaves them to ``pump``. Should a
        transform raise here, this socket alone fails (``fanout.offer``)."""
        writer = self.writer
        if writer is None or not writer.ready():
            return False
        parts: list[bytes] = []
        last = self.last
        for frame in frames:
            if frame.position <= last:
                continue
            shown = self.shown(frame)
            if shown is not None:
                if shown.omitted:
                    return False  # read from the store: not here
                parts.append(shown.wire if self.transform is None else self.wire_of(shown.text))
            last = frame.position
        if parts:
            writer.write(parts[0] if len(parts) == 1 else b"".join(parts))
        self.last = last
        return True

    async def pump(self) -> None:
        subject = self.subject
        listener = Listener()
        try:
            await self.services.feeds.join(subject, listener)
            await self.catch_up()
            listener.direct = self.deliver
            while True:
                batch = await listener.next_batch()
                if batch is None:  # too slow: what was queued is gone, the store is not
                    await self.catch_up()
                    continue
                await self.send_frames(batch)
        finally:
            self.services.feeds.leave(subject, listener)

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

    async def serve(self) -> None:
        await pump_and_listen(self.pump(), self.listen())


async def resolve(services: Services, frame: Frame) -> str:
    """The record of a reference (an event too large to publish, marked
    ``Chorus-Data: omitted``) as JSON text, read whole from the event store once for every
    socket that shows the frame (the others wait for the first one's read)."""
    read: asyncio.Future[str] | None = frame.__dict__.get("resolved")
    if read is None or (read.done() and (read.cancelled() or read.exception() is not None)):
        read = frame.__dict__["resolved"] = asyncio.ensure_future(_read_whole(services, frame))
    return await asyncio.shield(read)


async def _read_whole(services: Services, frame: Frame) -> str:
    try:
        ref = json.loads(frame.data)
        found = await services.read_history(
            ref["aggregate"], ref["aggregate_id"], after_version=int(ref["version"]) - 1, limit=1
        )
    except (ValueError, KeyError, TypeError):
        found = []  # not a reference the relay wrote: pass it on as it is
    return _encoder.encode(found[0]).decode() if found else frame.data.decode(errors="replace")


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
    """Cancel until done: a cancel can be lost inside library code (see chorus.aio)."""
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
        await Feed(socket, services, aggregate, aggregate_id, since, transform).serve()


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
