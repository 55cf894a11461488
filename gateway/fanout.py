"""Fan-out of live events to many WebSockets: one upstream subscription per subject.

Before this, every socket had its own JetStream ordered consumer, so each event was
received and parsed once per socket, and 200 sockets on one session could not keep up
with 50 events/s. Now a ``FeedHub`` keeps one ``Channel`` per subject (an ordered
consumer delivering new messages) shared by every socket that wants it, turns each
message into one ``Frame`` (text decoded once, the record decoded at most once, the
WebSocket frame encoded at most once), and hands the frames that arrived together to
each socket's ``Listener``: a bounded queue that the socket's own task drains at the
socket's own pace. Nothing a slow socket does reaches the channel or the other sockets:
when its queue is full the listener drops what it holds and says so (``next_batch``
returns None), and the feed either catches up from its last position from the store (the
session, workflow and events feeds) or closes with a reason (the agents feed). A frame
shown differently to different viewers (the events feed's notices) keeps each form beside
it (``Frame.view``), so that form too is made and encoded once for every socket. Memory per socket
is bounded by ``Listener.limit`` frames, shared between sockets; a channel is released
as soon as its last listener leaves.

Direct delivery. Waking 1,000 socket tasks per event, each sending through the ASGI
middleware chain and the server's framing, cost 34-49 us of gateway CPU per delivery.
A socket whose server hands it a ``FrameWriter`` (the ``chorus.frames`` ASGI extension
that ``chorus.gateway.server`` adds) registers ``Listener.direct``: while its task is
idle and nothing is queued, the channel calls it with the new frames and it writes their
pre-encoded bytes to the socket's transport at once, in one write, without a task
switch. Whenever it cannot (the socket's write buffer is over its high-water mark, it
is closing, a frame needs the store), it declines and the frames are queued as above.

Gap-free joining is the feed's part: it joins the channel *before* reading what it missed
from the store, so anything committed after that read arrives on the channel, and
anything seen twice is skipped by position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, Protocol, TypeVar

import msgspec
from chorus.contracts.feed import EventRecord
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode

log = logging.getLogger(__name__)

T = TypeVar("T")

POSITION_HEADER = "Chorus-Position"
#: ``omitted`` when the relay published a reference instead of an event too large to send.
DATA_HEADER = "Chorus-Data"
#: Frames a socket may have waiting before it is dropped to catch-up (or closed).
QUEUE_LIMIT = 2048
#: Messages a channel hands over together when several are already waiting upstream.
BATCH_LIMIT = 256
#: The ASGI extension (in a WebSocket's ``scope["extensions"]``): ``{"writer": FrameWriter}``.
FRAMES_EXTENSION = "chorus.frames"

_record = msgspec.json.Decoder(EventRecord)


def text_frame(data: bytes) -> bytes:
    """``data`` (UTF-8 text) as one whole, unmasked, uncompressed WebSocket text frame:
    what a server sends, the same bytes for every socket."""
    return WireFrame(Opcode.TEXT, data).serialize(mask=False)


class FrameWriter(Protocol):
    """Writes whole WebSocket frames, already encoded, to one socket's connection."""

    def ready(self) -> bool:
        """Open, and its write buffer under the high-water mark: a write goes out now."""

    def write(self, data: bytes) -> None:
        """Whole frames, in order; only when ``ready()``."""

    async def drain(self) -> bool:
        """Wait until ``ready()``; False if the socket closed instead."""


def frame_writer(scope: Any) -> FrameWriter | None:
    """The socket's FrameWriter, if its server gives one (the gateway's does)."""
    extension = (scope.get("extensions") or {}).get(FRAMES_EXTENSION) or {}
    writer: FrameWriter | None = extension.get("writer")
    return writer


class Frame:
    """One upstream message, shared by every listener: decoded at most once."""

    __slots__ = ("__dict__", "data", "omitted", "position", "subject")

    def __init__(self, position: int, subject: str, data: bytes, omitted: bool = False) -> None:
        self.position = position
        self.subject = subject
        self.data = data
        #: The data is only a reference to an event too large to publish.
        self.omitted = omitted

    @cached_property
    def text(self) -> str:
        return self.data.decode()

    @cached_property
    def wire(self) -> bytes:
        """The WebSocket frame of the data, encoded once for every socket."""
        return text_frame(self.data)

    def view(self, name: str, render: Callable[[Frame], bytes | None]) -> Frame | None:
        """This message as a kind of viewer sees it (``name``; e.g. the events feed's
        notice for roles that may not read the record): a frame of the same position and
        subject whose data is ``render(self)``, made once for every socket that shows it,
        so its text and WebSocket frame are encoded once too. None: not shown to them."""
        views: dict[str, Frame | None] | None = self.__dict__.get("views")
        if views is None:
            views = self.__dict__["views"] = {}
        elif name in views:
            return views[name]
        data = render(self)
        view = views[name] = None if data is None else Frame(self.position, self.subject, data)
        return view

    @cached_property
    def kind(self) -> tuple[str, str]:
        """(aggregate, event type), read from the subject ``chorus.evt.<aggregate>.<id>.
        <type>`` once for every socket, without decoding the data."""
        _, _, aggregate, _, event_type = (self.subject.split(".") + [""] * 5)[:5]
        return aggregate, event_type

    @cached_property
    def record(self) -> EventRecord | None:
        """The event record, or None if the message is not one (a reference to an event
        too large to publish, or, as the relay is the only writer of these subjects,
        someone else's message)."""
        if self.omitted:
            return None
        try:
            return _record.decode(self.data)
        except msgspec.DecodeError:
            return None


class UpstreamLost(RuntimeError):
    """The channel's subscription ended: the feed cannot go on."""


class Listener:
    """A socket's bounded queue of frames from one channel."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self.frames: deque[Frame] = deque()
        self.overflowed = False
        self.failure: BaseException | None = None
        #: Delivers frames at once, from the channel's task (see the module's docstring):
        #: True if it did, False to have them queued. Called only while the socket's task
        #: waits in ``next_batch`` with nothing queued, so the order is kept.
        self.direct: Callable[[Sequence[Frame]], bool] | None = None
        #: The socket's task is not waiting in ``next_batch`` (it is sending a batch, or
        #: catching up, or has not started).
        self.busy = True
        self._wake = asyncio.Event()
        self._room = asyncio.Event()

    def offer(self, frames: Sequence[Frame]) -> None:
        """Called by the channel with the frames that arrived together: never blocks,
        never grows past ``limit``."""
        if self.direct is not None and not self.busy and not self.frames and self.direct(frames):
            return
        if len(self.frames) + len(frames) > self.limit:
            self.frames.clear()
            self.overflowed = True
            frames = frames[-self.limit :]
        self.frames.extend(frames)
        self._wake.set()

    async def put(self, frame: Frame) -> None:
        """For a channel of this listener alone (a replay): wait for room instead of
        dropping, so a replay longer than ``limit`` is paced by its socket."""
        while len(self.frames) >= self.limit and self.failure is None:
            self._room.clear()
            await self._room.wait()
        self.frames.append(frame)
        self._wake.set()

    def fail(self, error: BaseException) -> None:
        self.failure = error
        self._wake.set()

    async def next_batch(self) -> list[Frame] | None:
        """Every frame waiting (at least one), in order; None once after an overflow (what
        was waiting was dropped: the caller catches up from its own position)."""
        self.busy = False
        try:
            while not self.frames and not self.overflowed and self.failure is None:
                self._wake.clear()
                await self._wake.wait()
        finally:
            self.busy = True
        if self.failure is not None:
            raise UpstreamLost(str(self.failure)) from self.failure
        if self.overflowed:
            self.overflowed = False
            return None
        batch = list(self.frames)
        self.frames.clear()
        self._room.set()
        return batch


def offer(listeners: set[Listener], batch: list[Frame]) -> None:
    """Hand ``batch`` to every listener. One whose direct delivery fails (its socket's
    transform, say) is failed alone: the others, and the channel, go on."""
    for listener in tuple(listeners):
        try:
            listener.offer(batch)
        except Exception as error:
            log.warning("feed listener failed: %s", error)
            listener.fail(error)


class Positions:
    """Reads a message's ``Chorus-Position``, distrusting what the relay cannot have
    written: an unreadable one, or one beyond the event store's head, reads as 0 (skipped).
    A forged message with a huge position would otherwise hide every later event."""

    def __init__(self, head: Callable[[], int]) -> None:
        self.read_head = head
        self.head = 0

    async def of(self, header: str) -> int:
        try:
            position = int(header)
        except ValueError:
            return 0
        if position > self.head:  # new to us: the store must have it already
            self.head = await asyncio.to_thread(self.read_head)
            if position > self.head:
                return 0
        return position


class Channel:
    """One upstream ordered consumer on ``subject``, dispatching to its listeners: new
    messages only, never waiting for a listener, for the hub's shared channels; or e.g.
    ``DeliverPolicy.ALL`` for a socket's private replay, which waits for its one listener
    (``private=True``) instead of dropping."""

    def __init__(
        self,
        nc: NATS,
        subject: str,
        deliver_policy: DeliverPolicy = DeliverPolicy.NEW,
        *,
        head: Callable[[], int],
        private: bool = False,
    ) -> None:
        self.subject = subject
        self.positions = Positions(head)
        self.deliver_policy = deliver_policy
        self.private = private
        self.listeners: set[Listener] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(nc), name=f"feed-channel {subject}")

    async def _run(self, nc: NATS) -> None:
        try:
            sub = await nc.jetstream().subscribe(
                self.subject, ordered_consumer=True, deliver_policy=self.deliver_policy
            )
        except BaseException as error:
            if not self.ready.done():
                if isinstance(error, asyncio.CancelledError):
                    self.ready.cancel()
                else:
                    self.ready.set_exception(error)
                    self.ready.exception()  # retrieved here; joiners see it through ready
            self._fail(error)
            if not isinstance(error, Exception):
                raise  # cancelled (or worse); a failed subscribe was told through ready
            return
        self.ready.set_result(None)
        try:
            batch: list[Frame] = []
            async for msg in sub.messages:
                headers = msg.headers or {}
                position = await self.positions.of(headers.get(POSITION_HEADER, "0"))
                if position != 0:  # 0: not written by the relay: never shown, no position
                    omitted = headers.get(DATA_HEADER) == "omitted"
                    batch.append(Frame(position, msg.subject, msg.data, omitted))
                if batch and (not sub.pending_msgs or len(batch) >= BATCH_LIMIT):
                    await self._dispatch(batch)  # all that arrived together, at once
                    batch = []
            self._fail(UpstreamLost(f"the subscription to {self.subject} ended"))
        except Exception as error:
            log.warning("feed channel %s failed: %s", self.subject, error)
            self._fail(error)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _dispatch(self, batch: list[Frame]) -> None:
        if not self.private:
            offer(self.listeners, batch)
            return
        for listener in tuple(self.listeners):
            for frame in batch:
                await listener.put(frame)

    def _fail(self, error: BaseException) -> None:
        for listener in tuple(self.listeners):
            listener.fail(error)

    async def close(self) -> None:
        """Cancel until done: a cancel can be lost inside library code (see chorus.aio)."""
        while not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=0.5)
        if not self._task.cancelled():
            self._task.exception()  # retrieved: the listeners were told


class FeedHub:
    """The gateway's channels, one per subject in use, each shared by its listeners."""

    def __init__(self, nc: NATS, head: Callable[[], int]) -> None:
        self.nc = nc
        #: The event store's head position (blocking: called in a thread), against which
        #: every message's position is checked.
        self.head = head
        self.channels: dict[str, Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._shared: dict[str, Any] = {}

    def shared(self, name: str, make: Callable[[], T]) -> T:
        """One object per hub under ``name`` (made on first use): what a kind of feed
        computes once for all its sockets, such as the agents feed's lookups."""
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]  # type: ignore[no-any-return]

    async def join(self, subject: str, listener: Listener) -> None:
        """Register ``listener`` on ``subject``'s channel (created on first use) and wait
        until the channel is subscribed: from then on every new event reaches it. The
        caller must ``leave`` (in a ``finally``), even if this raises."""
        channel = self.channels.get(subject)
        if channel is None:
            channel = self.channels[subject] = Channel(self.nc, subject, head=self.head)
        channel.listeners.add(listener)
        try:
            await asyncio.shield(channel.ready)
        except Exception:
            if self.channels.get(subject) is channel:
                del self.channels[subject]
            raise

    def leave(self, subject: str, listener: Listener) -> None:
        """Unregister; the channel is released with its last listener."""
        channel = self.channels.get(subject)
        if channel is None or listener not in channel.listeners:
            return
        channel.listeners.discard(listener)
        if not channel.listeners:
            del self.channels[subject]
            task = asyncio.create_task(channel.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            channel._fail(UpstreamLost("the gateway is stopping"))
            await channel.close()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=3)
