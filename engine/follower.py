"""The loop every process manager runs: read what is new in the log, then act on it.

A process manager keeps no position store: it re-reads the log from the start when the
engine starts and derives every command id from what it reacts to, so what it re-sends
after a restart is answered ``duplicate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from eventsourcing.persistence import ApplicationRecorder

from contracts.aio import raise_if_cancelling
from contracts.feed import EventRecord
from engine.worker import CommandWorker
from events.codec import decode_record
from events.store import select_topics_after

log = logging.getLogger(__name__)


class LogFollower:
    """Subclasses name their ``topics`` and implement ``observe`` and ``act``."""

    topics: list[str] = []

    def __init__(
        self, recorder: ApplicationRecorder, worker: CommandWorker, *, idle: float = 0.1
    ) -> None:
        self.recorder = recorder
        self.worker = worker
        self.idle = idle
        self.position = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after a commit, so the next round does not wait for the idle poll."""
        self._wake.set()

    def observe(self, record: EventRecord) -> None:
        raise NotImplementedError

    async def act(self) -> None:
        raise NotImplementedError

    def _catch_up(self) -> None:
        while True:
            batch, position = select_topics_after(self.recorder, self.position, self.topics)
            for notification in batch:
                self.observe(decode_record(notification))
            if position == self.position:
                return
            self.position = position

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._catch_up)
                await self.act()
            except Exception as error:
                raise_if_cancelling()
                log.warning("%s failed a round, retrying: %s", type(self).__name__, error)
                await asyncio.sleep(1)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle)
