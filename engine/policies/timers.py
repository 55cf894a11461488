"""Session deadlines: time out every open session that passes its deadline.

The timer follows the notification log (only session open/close topics), keeps a heap of
open sessions by deadline, and when one is due sends a ``timeout`` command through the
same worker pipeline as every other command. The command id is derived from the session
(``timeout:<id>``), so engines that race on the same deadline record it once. The heap and
the open sessions are saved with the position (engine/policies/checkpoint.py, closed sessions left
out), so a start reads only the log after it; a deadline that passed while the engine was
down fires right after it starts.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from chorus.aio import in_thread, raise_if_cancelling
from chorus.contracts.envelope import Envelope
from chorus.contracts.errors import STORE_UNAVAILABLE
from chorus.contracts.feed import EventRecord
from chorus.contracts.sessions import TimeOutSession
from chorus.engine.handlers import HANDLERS, Handler
from chorus.engine.policies.checkpoint import StateCheckpoint
from chorus.engine.policies.logtail import LogReader, StoreLog
from chorus.engine.ports import CommandSink
from chorus.engine.processor import Command, utc_now
from chorus.events.codec import topic_of
from chorus.events.session import SessionOpened
from chorus.store.checkpoints import CheckpointStore
from eventsourcing.persistence import ApplicationRecorder

log = logging.getLogger(__name__)

OPENED = topic_of("session", "SessionOpened")
CLOSING = [
    topic_of("session", t) for t in ("SessionFinalised", "SessionTimedOut", "SessionCancelled")
]
#: What the timer follows: sessions opening (with their deadline) and closing.
TOPICS = [OPENED, *CLOSING]

RETRY_AFTER = timedelta(seconds=1)


class SessionTimer:
    topics = TOPICS

    def __init__(
        self,
        recorder: ApplicationRecorder,
        worker: CommandSink,
        clock: Callable[[], datetime] = utc_now,
        *,
        max_sleep: float = 0.25,
        checkpoint_every: float = 1.0,
        log: LogReader | None = None,
    ) -> None:
        self.recorder = recorder
        self.log = log or StoreLog(recorder)
        self.worker = worker
        self.clock = clock
        self.max_sleep = max_sleep
        self.position = 0
        self._heap: list[tuple[datetime, str]] = []
        self._open: set[str] = set()
        self.fired = 0
        self.events_read = 0
        self.ready = asyncio.Event()
        self.checkpoint = StateCheckpoint(
            CheckpointStore(recorder), "SessionTimer", self, ("_heap", "_open"), [__name__],
            every=checkpoint_every,
        )  # fmt: skip
        self._restored = False

    def _observe(self, batch: list[EventRecord]) -> None:
        self.events_read += len(batch)
        for record in batch:
            if isinstance(opened := record.event, SessionOpened):
                heapq.heappush(self._heap, (opened.deadline, record.aggregate_id))
                self._open.add(record.aggregate_id)
            else:
                self._open.discard(record.aggregate_id)

    def _recent(self) -> bool:
        """Catch up from the tail's memory on the event loop (``LogFollower._recent``)."""
        found = self.log.recent(self.position, TOPICS) if self._restored else None
        if found is None:
            return False
        batch, self.position = found
        self._observe(batch)
        return True

    def _catch_up(self) -> None:
        if not self._restored:
            self.position = self.checkpoint.restore()
            self._restored = True
        while True:
            batch, position = self.log.after(self.position, TOPICS)
            self._observe(batch)
            if position == self.position:
                return
            self.position = position

    def _save(self) -> None:
        self.checkpoint.save(self.position, self._prune)

    def _prune(self) -> None:
        """Closed sessions leave the heap (else they wait there for their deadline)."""
        self._heap = [entry for entry in self._heap if entry[1] in self._open]
        heapq.heapify(self._heap)

    @staticmethod
    def _timeout(handler: Handler, session_id: str) -> Command:
        return Command(
            actor="system",
            handler=handler,
            envelope=Envelope(
                command_id=f"timeout:{session_id}",
                payload=TimeOutSession(session_id=session_id),
            ),
        )

    async def tick(self) -> None:
        """One round: read what is new, time out what is due, save the checkpoint."""
        if not self._recent():
            await in_thread(self._catch_up)
        self.ready.set()
        now = self.clock()
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            _, session_id = heapq.heappop(self._heap)
            if session_id in self._open:
                due.append(session_id)
        if due:
            handler = HANDLERS[("session", "timeout")]
            try:
                # All at once: the worker takes them in as few batches as it can.
                replies = await asyncio.gather(
                    *(self.worker.submit(self._timeout(handler, sid)) for sid in due)
                )
            except BaseException:
                for session_id in due:  # not answered: still due
                    heapq.heappush(self._heap, (now, session_id))
                raise
            for session_id, reply in zip(due, replies, strict=True):
                if reply.error is not None and reply.error.code == STORE_UNAVAILABLE:
                    # Nothing was recorded: try again shortly.
                    heapq.heappush(self._heap, (now + RETRY_AFTER, session_id))
                    continue
                self._open.discard(session_id)
                if reply.status == "accepted":
                    self.fired += 1
        if self.checkpoint.due(self.position):
            await in_thread(self._save)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as error:
                raise_if_cancelling()
                log.warning("timer failed a round, retrying: %s", error)
                await asyncio.sleep(1)
                continue
            sleep = self.max_sleep
            if self._heap:
                sleep = min(sleep, max(0.0, (self._heap[0][0] - self.clock()).total_seconds()))
            await asyncio.sleep(sleep)
