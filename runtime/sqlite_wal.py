"""Switching a SQLite file to WAL when other processes may be doing the same at that moment.

Why: ``chorus up`` starts the engine, its relay, the projector and the gateway together,
and each opens the same fresh files (the key store, the event store, the read store) and
switches them to WAL. SQLite answers a switch that races another connection's with
"database is locked" at once, without waiting its busy timeout: three threads opening a
fresh key store together failed in 35 of 200 tries, and an engine started beside its relay
died at start-up so. The switch is a one-off per file (WAL is persistent), so retrying it
for a while is the whole fix.

A leaf at the package root like ``chorus.aio``: it imports nothing of Chorus, so every layer
may use it (an import-linter contract keeps it so).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

#: How long a switch waits for the others before it gives up (seconds).
PATIENCE = 30.0


def use_wal(
    conn: sqlite3.Connection,
    *,
    patience: float = PATIENCE,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Put ``conn``'s database in WAL mode (a no-op if it is already), retrying "locked"."""
    deadline = clock() + patience
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or clock() >= deadline:
                raise
        sleep(delay)
        delay = min(delay * 2, 0.1)


def prepare_wal(path: str | Path, *, patience: float = PATIENCE) -> None:
    """Switch the file at ``path`` (created if missing) to WAL before a library opens it:
    eventsourcing switches a file only if it is not in WAL yet, and does not retry."""
    conn = sqlite3.connect(path, timeout=patience)
    try:
        use_wal(conn, patience=patience)
    finally:
        conn.close()
