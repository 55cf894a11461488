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
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Protocol

from chorus.contracts.feed import EventRecord
from chorus.events.codec import decode_record
from chorus.store.recorder import select_topics_after
from eventsourcing.persistence import ApplicationRecorder


class LogReader(Protocol):
    """What a follower reads the log through."""

    def after(self, position: int, topics: Sequence[str]) -> tuple[list[EventRecord], int]:
        """The records of ``topics`` after ``position`` (in order), and the position to go
        on from (``select_topics_after``'s contract, decoded)."""
        ...


class StoreLog:
    """Every read from the store: a follower on its own (tests, tools)."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        self.recorder = recorder

    def after(self, position: int, topics: Sequence[str]) -> tuple[list[EventRecord], int]:
        batch, end = select_topics_after(self.recorder, position, list(topics))
        return [decode_record(n) for n in batch], end


class LogTail:
    """The newest records of ``topics``, shared by the followers that read them."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        topics: Iterable[str],
        *,
        keep: int = 5_000,
        limit: int = 1000,
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
        self._records: list[EventRecord] = []
        #: Answers served from memory and from the store (tests, benches).
        self.shared = 0
        self.direct = 0

    def after(self, position: int, topics: Sequence[str]) -> tuple[list[EventRecord], int]:
        wanted = frozenset(topics)
        with self._lock:
            self._refresh()
            assert self._start is not None
            if position < self._start or not wanted <= self.topics:
                self.direct += 1
                return self.store.after(position, topics)
            self.shared += 1
            first = bisect_right(self._positions, position)
            picked = [
                record
                for topic, record in zip(
                    self._topics_of[first:], self._records[first:], strict=True
                )
                if topic in wanted
            ]
            return picked, max(position, self._head)

    def _refresh(self) -> None:
        """Read what was committed since the last look (the end first, as
        ``select_topics_after`` does, so nothing committed meanwhile is skipped)."""
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
                self._records.append(decode_record(notification))
            if len(batch) < self.limit:
                self._head = end
            else:
                self._head = batch[-1].id
        excess = len(self._records) - self.keep
        if excess > 0:
            self._start = self._positions[excess - 1]
            del self._positions[:excess]
            del self._topics_of[:excess]
            del self._records[:excess]
