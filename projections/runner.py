"""Following the notification log into the read store.

Each batch of notifications is applied, and the projection's position written, in one
read-store transaction: a crash between batches repeats nothing and skips nothing.
SQLite's recorder cannot push notifications, so the runner polls (quickly while there is
work, every ``idle_interval`` when idle).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from typing import Protocol

from eventsourcing.persistence import ApplicationRecorder

from contracts.aio import raise_if_cancelling
from contracts.feed import EventRecord
from events.codec import decode_record, is_domain_topic
from projections.readstore import ReadStore, set_position

log = logging.getLogger(__name__)


class Projection(Protocol):
    name: str
    aggregates: frozenset[str]
    ddl: list[str]
    tables: list[str]

    def apply(self, conn: sqlite3.Connection, record: EventRecord) -> None: ...


class ProjectionRunner:
    def __init__(
        self,
        recorder: ApplicationRecorder,
        store: ReadStore,
        projection: Projection,
        *,
        batch_size: int = 1000,
        idle_interval: float = 0.02,
    ) -> None:
        self.recorder = recorder
        self.store = store
        self.projection = projection
        self.batch_size = batch_size
        self.idle_interval = idle_interval
        with store.transaction() as conn:
            for statement in projection.ddl:
                conn.execute(statement)

    @property
    def position(self) -> int:
        return self.store.position(self.projection.name)

    def step(self) -> int:
        """Apply the next batch; returns how many notifications it consumed."""
        start = self.position + 1
        notifications = self.recorder.select_notifications(start, self.batch_size)
        if not notifications:
            return 0
        with self.store.transaction() as conn:
            for n in notifications:
                if not is_domain_topic(n.topic):
                    continue
                record = decode_record(n)
                if record.aggregate in self.projection.aggregates:
                    self.projection.apply(conn, record)
            set_position(conn, self.projection.name, notifications[-1].id)
        return len(notifications)

    def run_to_head(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Catch up with the log as it is now; returns the number of notifications read."""
        head = self.recorder.max_notification_id() or 0
        total = 0
        while self.position < head:
            moved = self.step()
            if not moved:
                break
            total += moved
            if progress is not None:
                progress(self.position, head)
        return total

    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Drop the read model and replay the log from position 0."""
        with self.store.transaction() as conn:
            for table in self.projection.tables:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in self.projection.ddl:
                conn.execute(statement)
            set_position(conn, self.projection.name, 0)
        return self.run_to_head(progress)

    async def run(self) -> None:
        while True:
            try:
                moved = await asyncio.to_thread(self.step)
            except Exception as error:
                raise_if_cancelling()
                log.warning(
                    "projection %s failed a batch, retrying: %s", self.projection.name, error
                )
                await asyncio.sleep(1)
                continue
            if not moved:
                await asyncio.sleep(self.idle_interval)
