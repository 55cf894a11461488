"""The engine's followers read the log through one ``LogTail``: each reader sees exactly
what reading the store itself would show, whatever its position and topics; the tail
answers from memory what its window holds and from the store what it does not."""

from __future__ import annotations

import uuid

import pytest
from chorus.engine.policies.logtail import LogTail, StoreLog
from chorus.engine.policies.timers import TOPICS as TIMER_TOPICS
from chorus.engine.processor import Processor
from chorus.events.codec import topic_of
from eventsourcing.persistence import ApplicationRecorder

from .conftest import FakeClock
from .test_processor import open_session, submit

SUBMITTED = topic_of("session", "ResultSubmitted")
TOPICS = [*TIMER_TOPICS, SUBMITTED]


def write_sessions(processor: Processor, count: int) -> None:
    for _ in range(count):
        sid = str(uuid.uuid4())
        replies = processor.handle_batch([open_session(sid, ["a", "b"]), submit(sid, "a")])
        assert [r.status for r in replies] == ["accepted", "accepted"]
        processor.handle_batch([submit(sid, "b")])  # finalises it


def positions(records: list[object]) -> list[int]:
    return [r.position for r in records]  # type: ignore[attr-defined]


def test_every_reader_sees_what_the_store_shows(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    processor = Processor(recorder, clock=clock)
    tail = LogTail(recorder, TOPICS)
    store = StoreLog(recorder)
    tail.after(0, TIMER_TOPICS)  # the window starts at the log's end: empty
    write_sessions(processor, 5)
    end = recorder.max_notification_id() or 0
    for topics in (TIMER_TOPICS, [SUBMITTED], TOPICS):
        for position in range(end + 1):
            shared, shared_end = tail.after(position, topics)
            direct, direct_end = store.after(position, topics)
            assert positions(shared) == positions(direct), (position, topics)
            assert shared == direct
            assert shared_end == direct_end == end
    assert tail.shared > 0 and tail.direct == 0


def test_a_record_is_decoded_once_for_all_readers(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    processor = Processor(recorder, clock=clock)
    tail = LogTail(recorder, TOPICS)
    tail.after(0, TOPICS)
    write_sessions(processor, 1)
    one, _ = tail.after(0, TIMER_TOPICS)
    two, _ = tail.after(0, TOPICS)
    assert one and all(any(a is b for b in two) for a in one)  # the same objects


def test_readers_behind_the_window_or_off_its_topics_read_the_store(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    processor = Processor(recorder, clock=clock)
    write_sessions(processor, 2)  # before the tail's first look: not in its window
    tail = LogTail(recorder, TOPICS, keep=4)
    store = StoreLog(recorder)
    assert tail.after(0, TOPICS) == store.after(0, TOPICS)
    assert tail.direct == 1
    start = recorder.max_notification_id() or 0
    write_sessions(processor, 3)  # 9 records of TOPICS; the window keeps the newest 4
    for position in range(start, (recorder.max_notification_id() or 0) + 1):
        assert tail.after(position, TOPICS) == store.after(position, TOPICS), position
    assert tail.direct > 1 and tail.shared > 0
    other = [topic_of("agent", "AgentRegistered")]
    before = tail.direct
    assert tail.after(start, other) == store.after(start, other)
    assert tail.direct == before + 1


@pytest.mark.parametrize("keep", [1, 3, 100])
def test_the_window_never_loses_a_record_as_it_moves(
    recorder: ApplicationRecorder, clock: FakeClock, keep: int
) -> None:
    """A follower that keeps up, reading after every batch, sees every record once."""
    processor = Processor(recorder, clock=clock)
    tail = LogTail(recorder, TOPICS, keep=keep)
    seen: list[int] = []
    position = 0
    tail.after(0, TOPICS)
    for _ in range(6):
        write_sessions(processor, 1)
        records, position = tail.after(position, TOPICS)
        seen += positions(records)
    expected, _ = StoreLog(recorder).after(0, TOPICS)
    assert seen == positions(expected)


class Ticks:
    """The tail's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_engines_own_commits_are_served_without_reading_the_store(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    """Rows the processor hands over join the window: ``recent`` answers every reader
    from memory, exactly as the store would, and the store is not read again."""
    processor = Processor(recorder, clock=clock)
    ticks = Ticks()
    tail = LogTail(recorder, TOPICS, recheck=1.0, clock=ticks)
    processor.on_commit = tail.committed
    store = StoreLog(recorder)
    assert tail.recent(0, TOPICS) is None  # not started: the first look reads the store
    tail.after(0, TOPICS)
    start = recorder.max_notification_id() or 0
    reads = tail.reads
    write_sessions(processor, 4)
    end = recorder.max_notification_id() or 0
    assert end > start
    for topics in (TIMER_TOPICS, [SUBMITTED], TOPICS):
        for position in range(start, end + 1):
            assert tail.recent(position, topics) == store.after(position, topics), position
    assert tail.reads == reads
    assert tail.recent(start - 1, TOPICS) is None  # behind the window: the store answers
    assert tail.recent(start, [topic_of("agent", "AgentRegistered")]) is None


def test_another_writers_rows_send_the_tail_back_to_the_store(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    """A second writer's rows come before the engine's next ones: the tail must not skip
    them, so it answers nothing from memory until it has read the store in order."""
    processor = Processor(recorder, clock=clock)
    other = Processor(recorder, clock=clock)  # another engine on the same store
    ticks = Ticks()
    tail = LogTail(recorder, TOPICS, recheck=1.0, clock=ticks)
    processor.on_commit = tail.committed
    store = StoreLog(recorder)
    tail.after(0, TOPICS)
    start = recorder.max_notification_id() or 0
    write_sessions(other, 1)
    # Not seen yet, but what memory holds has no gap: nothing, up to the old head.
    assert tail.recent(start, TOPICS) == ([], start)
    write_sessions(processor, 1)  # does not follow on from the tail's head
    assert tail.recent(start, TOPICS) is None
    assert tail.after(start, TOPICS) == store.after(start, TOPICS)
    write_sessions(processor, 1)  # follows on again: memory
    reads = tail.reads
    assert tail.recent(start, TOPICS) == store.after(start, TOPICS)
    assert tail.reads == reads
    write_sessions(other, 1)  # nothing of the engine's follows: found by the recheck
    assert tail.recent(start, TOPICS) != store.after(start, TOPICS)
    ticks.now += 1.0
    assert tail.recent(start, TOPICS) is None
    assert tail.after(start, TOPICS) == store.after(start, TOPICS)
