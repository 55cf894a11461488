"""Cold aggregates are folded beside the writer: a command on one is held while the others
go on, then comes back with its folded state (real SQLite store)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from chorus.engine.adapters.prefetch import Prefetcher
from chorus.engine.processor import Command, Processor
from eventsourcing.persistence import ApplicationRecorder

from .conftest import FakeClock
from .test_processor import open_session, submit


@dataclass
class Item:
    command: Command


def long_session(
    recorder: ApplicationRecorder, clock: FakeClock, results: int, to_go: int = 1
) -> str:
    """A session with ``results`` results submitted (a0, a1, ...) and ``to_go``
    participants still to submit."""
    sid = str(uuid.uuid4())
    members = [f"a{k}" for k in range(results + to_go)]
    writer = Processor(recorder, clock=clock)
    writer.handle_batch([open_session(sid, members)])
    writer.handle_batch([submit(sid, m) for m in members[:results]])
    return sid


async def requeued(items: list[Item], count: int) -> list[Item]:
    while len(items) < count:
        await asyncio.sleep(0.001)
    return items


async def test_a_command_on_a_cold_aggregate_is_held_while_the_others_go_on(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    cold_sid = long_session(recorder, clock, results=200)
    warm_sid = long_session(recorder, clock, results=1)
    processor = Processor(recorder, clock=clock)  # a restarted engine: nothing cached
    processor.handle_batch([submit(warm_sid, "a1")])  # now cached
    back: list[Item] = []
    prefetch: Prefetcher[Item] = Prefetcher(processor, back.append)
    try:
        cold, cold_too, warm = (Item(submit(cold_sid, "a200")), Item(submit(cold_sid, "a0")),
                                Item(submit(warm_sid, "a2")))  # fmt: skip
        now, folded = prefetch.admit([cold, warm, cold_too])
        assert now == [warm] and folded == {}
        prefetch.start_folds()  # the writer recorded the batch of ``warm``

        assert await requeued(back, 2) == [cold, cold_too]  # in arrival order
        now, folded = prefetch.admit(back)
        assert now == [cold, cold_too]
        (state,) = folded.values()
        assert state.version == 201

        processor.adopt(folded)
        replies = processor.handle_batch([item.command for item in now])
    finally:
        prefetch.close()
    assert [r.status for r in replies] == ["accepted", "duplicate"]


async def test_a_fold_that_the_log_outgrew_is_brought_up_to_date_when_adopted(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    sid = long_session(recorder, clock, results=20, to_go=2)
    processor = Processor(recorder, clock=clock)
    back: list[Item] = []
    prefetch: Prefetcher[Item] = Prefetcher(processor, back.append)
    try:
        prefetch.admit([Item(submit(sid, "a20"))])
        prefetch.start_folds()
        (item,) = await requeued(back, 1)
        _, folded = prefetch.admit([item])
        (state,) = folded.values()
        assert state.version == 21  # opened, 20 results
        # Meanwhile another worker records one more event on the aggregate.
        Processor(recorder, clock=clock).handle_batch([submit(sid, "a21")])
        processor.adopt(folded)
        assert processor.is_cached(uuid.UUID(sid))
        assert processor.load(item.command.handler, uuid.UUID(sid)).version == 22
        (reply,) = processor.handle_batch([item.command])
    finally:
        prefetch.close()
    assert reply.status == "accepted"


async def test_commands_that_create_their_aggregate_are_never_held(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    processor = Processor(recorder, clock=clock)
    prefetch: Prefetcher[Item] = Prefetcher(processor, lambda item: None)
    try:
        opening = Item(open_session(str(uuid.uuid4()), ("a", "b")))
        assert prefetch.admit([opening]) == ([opening], {})
    finally:
        prefetch.close()


async def test_a_fold_starts_only_once_the_batch_it_came_with_is_recorded(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    """A fold in a thread of the same interpreter is not beside the writer while it holds
    the interpreter (a snapshot's decode): the batch it came with goes first."""
    sid = long_session(recorder, clock, results=20)
    processor = Processor(recorder, clock=clock)
    folding = threading.Event()
    fold = processor.prefold

    def watched(*args: Any) -> Any:
        folding.set()
        return fold(*args)

    processor.prefold = watched  # type: ignore[method-assign]
    back: list[Item] = []
    prefetch: Prefetcher[Item] = Prefetcher(processor, back.append)
    try:
        now, _ = prefetch.admit([Item(submit(sid, "a20"))])
        assert now == []
        # The worker records its batch meanwhile: no fold may run beside it.
        assert not await asyncio.to_thread(folding.wait, 0.2)
        prefetch.start_folds()
        assert await asyncio.to_thread(folding.wait, 10)
        assert len(await requeued(back, 1)) == 1
    finally:
        prefetch.close()


async def test_a_fold_not_started_is_overdue_after_its_limit(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    """The worker starts folds when no command waits, or once one is overdue: a steady
    queue must not hold a cold command for ever."""
    sid = long_session(recorder, clock, results=5)
    prefetch: Prefetcher[Item] = Prefetcher(Processor(recorder, clock=clock), lambda i: None)
    try:
        assert not prefetch.overdue(0)  # nothing due
        prefetch.admit([Item(submit(sid, "a5"))])
        assert prefetch.overdue(0)
        assert not prefetch.overdue(3600)
        prefetch.start_folds()
        assert not prefetch.overdue(0)
    finally:
        prefetch.close()
