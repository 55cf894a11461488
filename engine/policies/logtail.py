"""The log's newest records, read once for all of the engine's followers.

The timer, the delegation manager, the dispatcher and the participant watch each follow
the notification log (``LogFollower``). Each used to ask the store for what is new itself
and decode it: after every commit, four pairs of queries over the same rows and the same
records decoded up to four times (a profile of ``bench.dispatch`` had 18% of the engine's
samples in those catch-ups, most of it the queries). ``LogTail`` reads the new rows of the
topics they follow once, decodes each once, and keeps the newest ``keep`` of them; a
follower asks for what follows its own position and gets the records of its topics from
memory. A follower behind the window (a start from an old checkpoint) or asking for a
topic the tail does not read is answered from the store as before, so the tail changes
what costs, never what a follower sees.

The engine's own commits reach the tail without a query: the processor hands each
committed batch's rows and positions to ``committed`` (in the writer thread), and they
join the window when they follow on from its head. Then ``recent`` answers a follower
from memory on the event loop: no thread hop, no query, and a row is decoded only when
a follower first asks for it. A profile of ``bench.e2e --rate 1000`` had 13% of the
engine's samples in the followers' catch-ups (two queries per round, a thread hop per
follower), for rows the engine itself had just written. Rows another writer committed
(a second engine on the same store) leave a gap before the engine's next rows: the tail
then reads the store, as it does at least every ``recheck`` seconds whatever happens.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from chorus.contracts.feed import EventRecord
from chorus.events.codec import decode_record
from chorus.store.recorder import select_topics_after
from eventsourcing.persistence import ApplicationRecorder, StoredEvent


class LogReader(Protocol):
    """What a follower reads the log through."""

    def after(self, position: int, topics: Sequence[str]) -> tuple[list[EventRecord], int]:
        """The records of ``topics`` after ``position`` (in order), and the position to go
        on from (``select_topics_after``'s contract, decoded)."""
        ...

    def recent(self, position: int, topics: Sequence[str]) -> tuple[list[EventRecord], int] | None:
        """What ``after`` answers, from memory only (cheap enough for the event loop), or
        None when that needs the store: call ``after`` in a thread then."""
        ...


class StoreLog:
    """Every read from the store: a follower on its own (tests, tools)."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        self.recorder = recorder

    def after(self, position: int, topics: Sequence[str]) -> tuple[list[EventRecord], int]:
        batch, end = select_topics_after(self.recorder, position, list(topics))
        return [decode_record(n) for n in batch], end

    def recent(self, position: int, topics: Sequence[str]) -> tuple[list[EventRecord], int] | None:
        return None  # everything comes from the store


class LogTail:
    """The newest records of ``topics``, shared by the followers that read them."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        topics: Iterable[str],
        *,
        keep: int = 5_000,
        limit: int = 1000,
        recheck: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recorder = recorder
        self.topics = frozenset(topics)
        self._topic_list = sorted(self.topics)
        self.keep = keep
        self.limit = limit
        self.store = StoreLog(recorder)
        self._lock = threading.Lock()
        #: The window holds every record of ``topics`` in (start, head]; None: not yet read.
        self._start: int | None = None
        self._head = 0
        self._positions: list[int] = []
        self._topics_of: list[str] = []
        #: Rows handed over by ``committed`` stay undecoded until a follower asks for them.
        self._records: list[EventRecord | StoredEvent] = []
        #: The store is read again when this much time has passed since its last read,
        #: or at once when a commit did not follow on from the head (``_stale``).
        self.recheck = recheck
        self.clock = clock
        self._read_at = 0.0
        self._stale = False
        #: Answers served from memory and from the store, and reads of the store (tests).
        self.shared = 0
        self.direct = 0
        self.reads = 0

    def committed(self, stored: Sequence[StoredEvent], positions: Sequence[int]) -> None:
        """The processor's committed batch: its rows join the window if they follow on from
        its head (else the store is read at the next ``after``)."""
        if not positions or len(positions) != len(stored):
            return
        with self._lock:
            if self._start is None or positions[-1] <= self._head:
                return  # not started yet, or read from the store already
            if positions[0] != self._head + 1 or positions[-1] - positions[0] != len(stored) - 1:
                self._stale = True  # another writer's rows come first: read them in order
                return
            for position, row in zip(positions, stored, strict=True):
                if row.topic in self.topics:
                    self._positions.append(position)
                    self._topics_of.append(row.topic)
                    self._records.append(row)
            self._head = positions[-1]
            self._trim()

    def recent(self, position: int, topics: Sequence[str]) -> tuple[list[EventRecord], int] | None:
        wanted = frozenset(topics)
        with self._lock:
            if (
                self._start is None
                or self._stale
                or self.clock() - self._read_at >= self.recheck
                or position < self._start
                or not wanted <= self.topics
            ):
                return None
            self.shared += 1
            return self._serve(position, wanted)

    def after(self, position: int, topics: Sequence[str]) -> tuple[list[EventRecord], int]:
        wanted = frozenset(topics)
        with self._lock:
            self._refresh()
            assert self._start is not None
            if position < self._start or not wanted <= self.topics:
                self.direct += 1
                return self.store.after(position, topics)
            self.shared += 1
            return self._serve(position, wanted)

    def _serve(self, position: int, wanted: frozenset[str]) -> tuple[list[EventRecord], int]:
        """The window's records of ``wanted`` after ``position`` (under the lock)."""
        picked: list[EventRecord] = []
        records = self._records
        for index in range(bisect_right(self._positions, position), len(records)):
            if self._topics_of[index] in wanted:
                record = records[index]
                if isinstance(record, StoredEvent):
                    record = records[index] = decode_record(record, self._positions[index])
                picked.append(record)
        return picked, max(position, self._head)

    def _refresh(self) -> None:
        """Read what was committed since the last look (the end first, as
        ``select_topics_after`` does, so nothing committed meanwhile is skipped)."""
        self.reads += 1
        self._read_at = self.clock()
        self._stale = False
        end = self.recorder.max_notification_id() or 0
        if self._start is None:
            self._start = self._head = end  # the window starts empty, at the log's end
            return
        while self._head < end:
            batch = self.recorder.select_notifications(
                self._head + 1, self.limit, stop=end, topics=self._topic_list
            )
            for notification in batch:
                self._positions.append(notification.id)
                self._topics_of.append(notification.topic)
                self._records.append(notification)
            if len(batch) < self.limit:
                self._head = end
            else:
                self._head = batch[-1].id
        self._trim()

    def _trim(self) -> None:
        excess = len(self._records) - self.keep
        if excess > 0:
            self._start = self._positions[excess - 1]
            del self._positions[:excess]
            del self._topics_of[:excess]
            del self._records[:excess]
