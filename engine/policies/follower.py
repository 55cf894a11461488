"""The loop every process manager runs: read what is new in the log, then act on it.

A process manager derives every command id from what it reacts to, so what it re-sends
after a restart is answered ``duplicate``. It keeps its position and the state it needs
in a checkpoint (engine/policies/checkpoint.py), written between rounds: a restart goes on from
there instead of re-reading the log from the start, and re-reads at most the last
``checkpoint_every`` seconds of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from chorus.aio import in_thread, raise_if_cancelling
from chorus.contracts.feed import EventRecord
from chorus.engine.policies.checkpoint import StateCheckpoint
from chorus.engine.policies.logtail import LogReader, StoreLog
from chorus.engine.ports import CommandSink
from chorus.store.checkpoints import CheckpointStore
from eventsourcing.persistence import ApplicationRecorder

log = logging.getLogger(__name__)


class LogFollower:
    """Subclasses name their ``topics``, the attributes of their state
    (``checkpoint_fields``) and implement ``observe`` and ``act``."""

    topics: list[str] = []
    checkpoint_name: str = ""
    checkpoint_fields: tuple[str, ...] = ()
    #: Modules whose code shapes the saved state (the subclass's own module is added).
    checkpoint_modules: tuple[str, ...] = ()

    def __init__(
        self,
        recorder: ApplicationRecorder,
        worker: CommandSink,
        *,
        idle: float = 0.1,
        checkpoint_every: float = 1.0,
        log: LogReader | None = None,
    ) -> None:
        self.recorder = recorder
        #: Where new records come from: the engine's shared ``LogTail``, else the store.
        self.log = log or StoreLog(recorder)
        self.worker = worker
        self.idle = idle
        self.position = 0
        #: Events read from the log since this object was made (tests, benches).
        self.events_read = 0
        #: Set once the first catch-up is done: the manager knows the whole log.
        self.ready = asyncio.Event()
        self.checkpoint = StateCheckpoint(
            CheckpointStore(recorder),
            self.checkpoint_name or type(self).__name__,
            self,
            self.checkpoint_fields,
            [type(self).__module__, __name__, *self.checkpoint_modules],
            every=checkpoint_every,
        )
        self._restored = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after a commit, so the next round does not wait for the idle poll."""
        self._wake.set()

    def observe(self, record: EventRecord) -> None:
        raise NotImplementedError

    async def act(self) -> None:
        raise NotImplementedError

    def prune(self) -> None:
        """Drop what is no longer needed before the state is saved (subclasses)."""

    def _recent(self) -> bool:
        """Catch up from the tail's memory, on the event loop; False when that needs the
        store (the first round restores the checkpoint, a tail behind reads the log)."""
        if not self._restored:
            return False
        found = self.log.recent(self.position, self.topics)
        if found is None:
            return False
        batch, self.position = found
        for record in batch:
            self.observe(record)
        self.events_read += len(batch)
        return True

    def _catch_up(self) -> None:
        if not self._restored:
            self.position = self.checkpoint.restore()
            self._restored = True
        while True:
            batch, position = self.log.after(self.position, self.topics)
            for record in batch:
                self.observe(record)
            self.events_read += len(batch)
            if position == self.position:
                return
            self.position = position

    def _save(self) -> None:
        if self.checkpoint.fields:
            self.checkpoint.save(self.position, self.prune)

    async def round(self) -> None:
        """Read what is new, act on it, then save the checkpoint (if due)."""
        if not self._recent():
            await in_thread(self._catch_up)
        self.ready.set()
        await self.act()
        if self.checkpoint.fields and self.checkpoint.due(self.position):
            await in_thread(self._save)

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception as error:
                raise_if_cancelling()
                log.warning("%s failed a round, retrying: %s", type(self).__name__, error)
                await asyncio.sleep(1)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle)
