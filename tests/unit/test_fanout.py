"""Feed fan-out logic: a bounded queue per socket, and a slow socket caught up from the
store with every event once, in order. (The shared upstream and live delivery are proven
against a real gateway in tests/integration/test_gateway_feed.py.)"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
from chorus.contracts.feed import EventRecord
from chorus.gateway.fanout import Frame, Listener
from chorus.gateway.feeds import Feed


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
    for p in (1, 2, 3):
        listener.offer(frame(p))
    batch = await listener.next_batch()
    assert batch is not None
    assert [f.position for f in batch] == [1, 2, 3]


async def test_a_full_listener_drops_what_it_holds_and_says_so_once() -> None:
    listener = Listener(limit=3)
    for p in range(1, 6):
        listener.offer(frame(p))
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
            listener.offer(frame(p))

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
        services.listener.offer(frame(p))
    services.store += [record(p) for p in (21, 22)]
    while feed.last < 22:
        await asyncio.sleep(0)
    pumping.cancel()
    await asyncio.gather(pumping, return_exceptions=True)

    positions = [msgspec.json.decode(text)["position"] for text in socket.sent]
    assert positions == list(range(4, 23))
