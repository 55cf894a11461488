"""Following the notification log into the read store.

Each batch of notifications is applied, and the projection's position written, in one
read-store transaction: a crash between batches repeats nothing and skips nothing.
SQLite's recorder cannot push notifications, so the runner polls (quickly while there is
work, every ``idle_interval`` when idle).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from eventsourcing.persistence import ApplicationRecorder
from opentelemetry.trace import Tracer

from contracts.aio import raise_if_cancelling
from contracts.feed import EventRecord
from events.codec import decode_record, is_domain_topic
from projections import metrics
from projections.readstore import ReadStore, position_in, set_position
from projections.tracing import record_write_spans

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
        tracer: Tracer | None = None,
    ) -> None:
        self.recorder = recorder
        #: Write spans in the traces of traced commands (see projections.tracing).
        self.tracer = tracer
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
        """Apply the next batch; returns how many notifications it consumed.

        The position is read again inside the write transaction (compare-and-set): if
        another writer moved it meanwhile (a rebuild swapping tables in), this batch is
        dropped and the next step starts from the new position.
        """
        start = self.position
        notifications = self.recorder.select_notifications(start + 1, self.batch_size)
        if not notifications:
            return 0
        started, started_ns = time.perf_counter(), time.time_ns()
        applied: list[EventRecord] = []
        with self.store.transaction() as conn:
            if position_in(conn, self.projection.name) != start:
                return 0
            for n in notifications:
                if not is_domain_topic(n.topic):
                    continue
                record = decode_record(n)
                if record.aggregate in self.projection.aggregates:
                    self.projection.apply(conn, record)
                    applied.append(record)
            set_position(conn, self.projection.name, notifications[-1].id)
        name = self.projection.name
        if self.tracer is not None and applied:
            with contextlib.suppress(Exception):  # tracing never stalls a read model
                record_write_spans(self.tracer, self.recorder, name, applied, started_ns,
                                   time.time_ns())  # fmt: skip
        metrics.BATCH_SECONDS.labels(name).observe(time.perf_counter() - started)
        metrics.APPLIED.labels(name).inc(len(notifications))
        metrics.POSITION.labels(name).set(notifications[-1].id)
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
        """Replay the log from position 0 into a fresh store, then swap it in atomically.

        Blue/green: the rebuild fills a separate SQLite file while queries (and a running
        projector) keep using the live tables; one transaction then replaces the live
        tables (definitions, indexes and rows) and position with the rebuilt ones. A running
        projector resumes from there. The scratch file is this rebuild's own (projection,
        process, random suffix), so rebuilds of several projections can run at once.
        """
        shadow_path = self.store.path.with_name(
            f"{self.store.path.name}.rebuild-{self.projection.name}-{os.getpid()}-"
            f"{uuid.uuid4().hex[:8]}"
        )
        shadow_store = ReadStore(f"sqlite:///{shadow_path}")
        try:
            shadow = ProjectionRunner(
                self.recorder, shadow_store, self.projection, batch_size=self.batch_size
            )
            count = shadow.run_to_head(progress)
            conn = self.store.connection()
            conn.execute("ATTACH DATABASE ? AS shadow", (str(shadow_path),))
            try:
                while not self._swap_in(shadow_position=shadow.position):
                    # The live projector is ahead of the shadow: catch up, so the swap never
                    # shows queries an older state than they already saw.
                    count += shadow.run_to_head(progress)
            finally:
                conn.execute("DETACH DATABASE shadow")
        finally:
            shadow_store.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                shadow_path.with_name(shadow_path.name + suffix).unlink(missing_ok=True)
        return count

    def _swap_in(self, shadow_position: int) -> bool:
        """Replace the live tables and position with the shadow's, unless live is ahead.

        The live tables are dropped and created again from the shadow's definitions (with
        their indexes), and the rows copied by name: a live table written by an older
        definition (other columns, another order) is replaced, never mixed with the new.
        """
        with self.store.transaction() as tx:
            if position_in(tx, self.projection.name) > shadow_position:
                return False
            for table in self.projection.tables:
                definitions = tx.execute(
                    "SELECT type, sql FROM shadow.sqlite_master WHERE tbl_name=? "
                    "AND sql IS NOT NULL ORDER BY type='index'",
                    (table,),
                ).fetchall()
                columns = ", ".join(
                    f'"{row["name"]}"' for row in tx.execute(f"PRAGMA shadow.table_info({table})")
                )
                tx.execute(f"DROP TABLE IF EXISTS main.{table}")
                for row in definitions:  # unqualified: created in main
                    tx.execute(row["sql"])
                tx.execute(
                    f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM shadow.{table}"
                )
            set_position(tx, self.projection.name, shadow_position)
        return True

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
