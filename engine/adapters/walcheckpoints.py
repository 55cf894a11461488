"""Checkpoints of the SQLite event store's WAL, beside the engine's writer, not in it.

The engine's own connections leave the WAL alone (``chorus.sqlite_wal.leave_checkpoints``,
set by ``open_recorder(..., inline_checkpoints=False)``): else the commit that takes the WAL
past 1,000 pages copies it back into the database file on the writer thread, a stall of
8-10 ms every quarter of a second at 1,000 commands/s that every command queued behind it
shares (see ``chorus.sqlite_wal``). This loop does that copy on a connection of its own, in
a thread: SQLite's work there runs without the interpreter lock, and a ``PASSIVE``
checkpoint takes no lock the writer needs, so the writer never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from chorus.aio import in_thread, raise_if_cancelling
from chorus.engine.adapters import metrics
from chorus.engine.adapters.ratelog import RateLimitedLog
from chorus.sqlite_wal import checkpoint

log = logging.getLogger(__name__)

#: Seconds between checkpoints: at 1,000 commands/s the WAL gains about 400 pages in that
#: time, a copy of about 1.5 ms; the WAL file stays a few MB.
INTERVAL = 0.1


class WalCheckpointer:
    """Copies the WAL of the SQLite file at ``path`` back every ``interval`` seconds."""

    def __init__(self, path: str, *, interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        #: Checkpoints done (that ran, whatever they could copy).
        self.done = 0
        self.errors = RateLimitedLog(log)

    def _connect(self) -> sqlite3.Connection:
        # Autocommit: a checkpoint cannot run inside a transaction. Used by one thread at a
        # time (each step is awaited before the next).
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    async def run(self) -> None:
        conn = await in_thread(self._connect)
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    frames, copied = await in_thread(checkpoint, conn)
                except sqlite3.Error as error:
                    # The writer goes on meanwhile; the WAL only grows until the next one.
                    raise_if_cancelling()
                    self.errors.warning("WAL checkpoint failed: %s", error)
                    continue
                self.done += 1
                if frames < 0:
                    continue  # not in WAL mode (a journal of another kind needs none)
                metrics.WAL_FRAMES.labels("total").set(frames)
                metrics.WAL_FRAMES.labels("not_copied").set(frames - copied)
        finally:
            conn.close()
