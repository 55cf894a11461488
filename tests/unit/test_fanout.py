"""Feed fan-out logic: a bounded queue per socket, a slow socket caught up from the store
with every event once, in order, frames written directly while a socket keeps up, and
each message encoded once for every socket. (The shared upstream and live delivery are
proven against a real gateway in tests/integration/test_gateway_feed.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import msgspec
import pytest
from chorus.contracts.feed import EventRecord
from chorus.gateway.agent_feed import AgentFeed, AgentStatus
from chorus.gateway.console_feed import LogFeed, tail_start
from chorus.gateway.fanout import FRAMES_EXTENSION, Frame, Listener, UpstreamLost, offer
from chorus.gateway.feeds import Feed, resolve
from chorus.projections.audit import LogPage
from websockets.protocol import Protocol, Side, State


def record(position: int) -> EventRecord:
    return EventRecord(
        position=position, aggregate="session", aggregate_id="s", version=position,
        type="ResultSubmitted", schema_version=1,
        occurred_at=datetime(2030, 1, 1, tzinfo=UTC), actor="a", command_id=f"c{position}",
        correlation_id=None, causation_id=None, data={}, prev_hash="", hash="",
    )  # fmt: skip


def frame(position: int) -> Frame:
    return Frame(
        position, "chorus.evt.session.s.ResultSubmitted", msgspec.json.encode(record(position))
    )


async def test_a_listener_hands_over_everything_waiting_in_order() -> None:
    listener = Listener(limit=10)
    listener.offer([frame(1), frame(2)])
    listener.offer([frame(3)])
    batch = await listener.next_batch()
    assert batch is not None
    assert [f.position for f in batch] == [1, 2, 3]


async def test_a_full_listener_drops_what_it_holds_and_says_so_once() -> None:
    listener = Listener(limit=3)
    for p in range(1, 6):
        listener.offer([frame(p)])
    assert len(listener.frames) <= 3
    assert await listener.next_batch() is None  # dropped: the caller catches up
    batch = await listener.next_batch()
    assert batch is not None
    assert [f.position for f in batch] == [4, 5]  # what came after the drop


async def test_a_replay_waits_for_room_instead_of_dropping() -> None:
    """A private replay channel paces itself by its one socket: nothing is dropped."""
    listener = Listener(limit=2)
    putting = asyncio.create_task(_put_all(listener, range(1, 6)))
    received: list[int] = []
    while len(received) < 5:
        batch = await listener.next_batch()
        assert batch is not None  # never an overflow
        assert len(batch) <= 2
        received += [f.position for f in batch]
    await putting
    assert received == [1, 2, 3, 4, 5]


async def _put_all(listener: Listener, positions: range) -> None:
    for p in positions:
        await listener.put(frame(p))


def test_a_frame_is_decoded_once_for_every_socket() -> None:
    shared = frame(7)
    assert shared.text is shared.text
    assert shared.record is shared.record
    assert shared.record is not None and shared.record.position == 7
    assert Frame(8, "x", b"not json").record is None


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.scope: dict[str, object] = {}

    async def send_text(self, text: str) -> None:
        self.sent.append(text)


class StoreAndHub:
    """The store holds positions 1..20; the hub overflows the socket's queue on joining
    (as a flood of live events would) and then delivers 18..25, some of them twice."""

    def __init__(self) -> None:
        self.store = [record(p) for p in range(1, 21)]
        self.feeds = self
        self.listener: Listener | None = None

    async def read_history(
        self, aggregate: str, aggregate_id: str, *, after_position: int, limit: int
    ) -> list[EventRecord]:
        return [r for r in self.store if r.position > after_position][:limit]

    async def join(self, subject: str, listener: Listener) -> None:
        self.listener = listener
        listener.limit = 2
        for p in (5, 6, 7):  # the queue overflows before the socket drains it
            listener.offer([frame(p)])

    def leave(self, subject: str, listener: Listener) -> None:
        pass


async def test_a_slow_socket_is_caught_up_from_the_store_with_no_gap_or_duplicate() -> None:
    services = StoreAndHub()
    socket = FakeSocket()
    feed = Feed(socket, services, "session", "s", since=3)  # type: ignore[arg-type]
    pumping = asyncio.create_task(feed.pump())
    while feed.last < 20:
        await asyncio.sleep(0)
    assert services.listener is not None
    for p in (18, 19, 21, 21, 22):
        services.listener.offer([frame(p)])
    services.store += [record(p) for p in (21, 22)]
    while feed.last < 22:
        await asyncio.sleep(0)
    pumping.cancel()
    await asyncio.gather(pumping, return_exceptions=True)

    positions = [msgspec.json.decode(text)["position"] for text in socket.sent]
    assert positions == list(range(4, 23))


# Direct delivery (a socket whose server gives it a frame writer) --------------------------


class FakeWriter:
    """A FrameWriter over a buffer: ``ready`` is the test's to set, as the transport's
    flow control would."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.can_write = asyncio.Event()
        self.can_write.set()

    def ready(self) -> bool:
        return self.can_write.is_set()

    def write(self, data: bytes) -> None:
        assert self.ready(), "written while not ready"
        self.writes.append(data)

    async def drain(self) -> bool:
        await self.can_write.wait()
        return True

    def positions(self) -> list[int]:
        """What a client would read: the positions of the text messages, in order."""
        client = Protocol(Side.CLIENT, state=State.OPEN)
        client.receive_data(b"".join(self.writes))
        return [msgspec.json.decode(f.data)["position"] for f in client.events_received()]


def writing_socket(writer: FakeWriter) -> FakeSocket:
    socket = FakeSocket()
    socket.scope = {"extensions": {FRAMES_EXTENSION: {"writer": writer}}}
    return socket


class Hub(StoreAndHub):
    async def join(self, subject: str, listener: Listener) -> None:
        self.listener = listener


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


async def test_an_idle_listener_hands_new_frames_to_its_socket_at_once() -> None:
    listener = Listener(limit=10)
    direct: list[int] = []
    accept = True

    def deliver(frames: Sequence[Frame]) -> bool:
        if accept:
            direct.extend(f.position for f in frames)
        return accept

    listener.direct = deliver
    listener.offer([frame(1)])  # the socket's task has not asked yet: queued
    first = await listener.next_batch()
    assert first is not None and [f.position for f in first] == [1] and direct == []
    waiting = asyncio.create_task(listener.next_batch())
    await until(lambda: not listener.busy)
    listener.offer([frame(2), frame(3)])
    assert direct == [2, 3] and not listener.frames and not waiting.done()
    accept = False  # e.g. the socket's write buffer is full: queued, its task woken
    listener.offer([frame(4)])
    batch = await waiting
    assert batch is not None and [f.position for f in batch] == [4]
    assert direct == [2, 3]


async def test_a_listener_whose_direct_delivery_fails_is_failed_alone() -> None:
    good, bad = Listener(), Listener()

    def broken(frames: Sequence[Frame]) -> bool:
        raise ValueError("a transform that fails")

    bad.direct, bad.busy = broken, False
    offer({good, bad}, [frame(1)])
    batch = await good.next_batch()
    assert batch is not None and [f.position for f in batch] == [1]
    with pytest.raises(UpstreamLost, match="a transform that fails"):
        await bad.next_batch()


async def test_a_feed_writes_each_event_once_in_order_directly_or_after_its_buffer_drains() -> None:
    services = Hub()
    writer = FakeWriter()
    feed = Feed(writing_socket(writer), services, "session", "s", since=3)  # type: ignore[arg-type]
    pumping = asyncio.create_task(feed.pump())
    await until(lambda: services.listener is not None and not services.listener.busy)
    assert services.listener is not None
    assert len(writer.writes) == 1  # the catch-up page (4..20) in one write
    services.listener.offer([frame(18), frame(19), frame(21)])  # two met in the store already
    assert len(writer.writes) == 2 and feed.last == 21  # written from the channel's call
    writer.can_write.clear()  # the client stops reading: the frames wait in the queue
    services.listener.offer([frame(22)])
    services.listener.offer([frame(22), frame(23)])
    await asyncio.sleep(0)
    assert len(writer.writes) == 2
    writer.can_write.set()
    await until(lambda: feed.last == 23)
    pumping.cancel()
    await asyncio.gather(pumping, return_exceptions=True)
    assert writer.positions() == list(range(4, 24))


def test_a_frame_is_encoded_once_for_every_socket() -> None:
    shared = frame(7)
    assert shared.wire is shared.wire
    client = Protocol(Side.CLIENT, state=State.OPEN)
    client.receive_data(shared.wire)
    (message,) = client.events_received()
    assert message.data == shared.data


# The agents feed: frames about no agent passed over in the channel, messages encoded once --


def subject_frame(position: int, subject: str) -> Frame:
    return Frame(position, subject, msgspec.json.encode(record(position)))


class Feeds:
    def __init__(self) -> None:
        self.objects: dict[str, object] = {}

    def shared(self, name: str, make: Callable[[], object]) -> object:
        return self.objects.setdefault(name, make())


class AgentServices:
    def __init__(self) -> None:
        self.feeds = Feeds()


def test_the_agents_feed_passes_over_events_about_no_agent_without_its_task() -> None:
    feed = AgentFeed(writing_socket(FakeWriter()), AgentServices(), since=0)  # type: ignore[arg-type]
    unrelated = [
        subject_frame(1, "chorus.evt.workflow.w.WorkflowCreated"),
        subject_frame(2, "chorus.evt.session.s.SessionExtended"),
    ]
    assert feed.deliver(unrelated) and feed.last == 2
    assert not feed.deliver([subject_frame(3, "chorus.evt.agent.a.AgentWentOffline")])
    assert not feed.deliver([subject_frame(4, "chorus.evt.session.s.ResultSubmitted")])
    assert feed.last == 2  # the pump handles those, in order


def test_the_agents_feed_encodes_a_message_once_for_every_socket() -> None:
    services = AgentServices()
    first = AgentFeed(FakeSocket(), services, since=0)  # type: ignore[arg-type]
    second = AgentFeed(FakeSocket(), services, since=0)  # type: ignore[arg-type]
    assert first.lookups is second.lookups
    built: list[str] = []

    def message(name: str) -> AgentStatus:
        built.append(name)
        return AgentStatus(agent_id=name, status="busy", event="ResultSubmitted", position=4,
                           version=1, occurred_at="t", data={})  # fmt: skip

    one = first.lookups.encoded(("assigned", 4, "a", "busy"), message, "a")
    two = second.lookups.encoded(("assigned", 4, "a", "busy"), message, "a")
    assert one is two and built == ["a"]
    assert msgspec.json.decode(one.text)["agent_id"] == "a"
    client = Protocol(Side.CLIENT, state=State.OPEN)
    client.receive_data(one.wire)
    assert [f.data.decode() for f in client.events_received()] == [one.text]


# The events feed: the whole log, notices made once per frame, caught up from the log -------


def log_record(position: int) -> EventRecord:
    return msgspec.structs.replace(
        record(position), aggregate_id=f"s{position}", data={"secret": position}
    )


class Log(Hub):
    """The store's log: events at every position but multiples of 3 (bookkeeping rows,
    never shown), up to 40. Joining overflows the socket's queue, as a flood would."""

    def __init__(self) -> None:
        super().__init__()
        self.log = [log_record(p) for p in range(1, 41) if p % 3]
        self.last = 40
        self.audit = self
        self.history = self

    async def join(self, subject: str, listener: Listener) -> None:
        self.listener = listener
        listener.limit = 2
        for p in (5, 7, 8):
            listener.offer([log_frame(p)])

    def page(self, after: int, limit: int, where: object) -> LogPage:
        items = [r for r in self.log if r.position > after][:limit]
        scanned = items[-1].position if len(items) == limit else max(self.last, after)
        return LogPage(items=items, next_after=scanned, more=scanned < self.last)

    def head(self) -> int:
        return self.last

    def stream(self, after: int, where: object) -> Iterator[list[EventRecord]]:
        yield [r for r in self.log if r.position > after]


def log_frame(position: int, omitted: bool = False) -> Frame:
    data = log_record(position)
    if omitted:  # what the relay publishes for an event too large: the record without data
        data = msgspec.structs.replace(data, data={})
    return Frame(position, f"chorus.evt.session.s{position}.ResultSubmitted",
                 msgspec.json.encode(data), omitted)  # fmt: skip


async def test_the_events_feed_catches_a_slow_socket_up_from_the_log_with_notices_only() -> None:
    services = Log()
    socket = FakeSocket()
    feed = LogFeed(socket, services, since=4, tail=50, whole=False)  # type: ignore[arg-type]
    assert feed.subject == "chorus.evt.>"
    pumping = asyncio.create_task(feed.pump())
    await until(lambda: feed.last == 40)
    assert services.listener is not None
    services.log += [log_record(41), log_record(43)]
    services.last = 43
    services.listener.offer([log_frame(38), log_frame(41), log_frame(41), log_frame(43, True)])
    await until(lambda: feed.last == 43)
    pumping.cancel()
    await asyncio.gather(pumping, return_exceptions=True)

    sent = [msgspec.json.decode(text) for text in socket.sent]
    assert [n["position"] for n in sent] == [p for p in range(5, 44) if p % 3 and p != 42]
    assert {tuple(n) for n in sent} == {
        ("type", "event", "position", "aggregate", "aggregate_id", "version", "occurred_at")
    }
    assert sent[-1]["event"] == "ResultSubmitted" and sent[-1]["aggregate_id"] == "s43"


async def test_the_events_feed_tail_counts_events_not_bookkeeping_rows() -> None:
    services = Log()
    assert tail_start(services, 3) == 36  # type: ignore[arg-type]  # then 37, 38, 40
    assert tail_start(services, 0) == 40  # type: ignore[arg-type]
    assert tail_start(services, 1000) == 0  # type: ignore[arg-type]
    socket = FakeSocket()
    feed = LogFeed(socket, services, since=None, tail=3, whole=True)  # type: ignore[arg-type]
    await feed.catch_up()
    assert [msgspec.json.decode(t)["position"] for t in socket.sent] == [37, 38, 40]
    assert msgspec.json.decode(socket.sent[0])["data"] == {"secret": 37}


def test_the_events_feed_makes_each_notice_once_for_every_socket() -> None:
    services = Log()
    one, two = (LogFeed(writing_socket(FakeWriter()), services, since=0, tail=50, whole=False)  # type: ignore[arg-type]
                for _ in range(2))  # fmt: skip
    whole = LogFeed(writing_socket(FakeWriter()), services, since=0, tail=50, whole=True)  # type: ignore[arg-type]
    shared = log_frame(7)
    assert one.shown(shared) is two.shown(shared) is not None
    assert whole.shown(shared) is shared
    notice = one.shown(shared)
    assert notice is not None and notice.wire is notice.wire
    assert "secret" not in notice.text and msgspec.json.decode(notice.text)["position"] == 7
    big = one.shown(log_frame(8, omitted=True))  # a notice needs no read of the store
    assert big is not None and not big.omitted
    assert one.shown(Frame(9, "chorus.evt.x", b"not a record")) is None
    assert one.deliver([shared, log_frame(8, omitted=True)]) and one.last == 8
    assert not whole.deliver([log_frame(8, omitted=True)])  # the whole record: from the store


class Store:
    """Holds the record of every reference; counts the reads."""

    def __init__(self) -> None:
        self.reads = 0

    async def read_history(
        self, aggregate: str, aggregate_id: str, **kwargs: int
    ) -> list[EventRecord]:
        self.reads += 1
        await asyncio.sleep(0)  # the other sockets ask while this read is under way
        return [log_record(int(aggregate_id[1:]))]


async def test_an_event_too_large_to_publish_is_read_once_for_every_socket() -> None:
    services = Store()
    big = log_frame(8, omitted=True)
    texts = await asyncio.gather(*(resolve(services, big) for _ in range(5)))  # type: ignore[arg-type]
    assert services.reads == 1 and len(set(texts)) == 1
    assert msgspec.json.decode(texts[0])["data"] == {"secret": 8}
    assert await resolve(services, big) == texts[0] and services.reads == 1  # type: ignore[arg-type]
