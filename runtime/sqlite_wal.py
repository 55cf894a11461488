"""SQLite's write-ahead log: switching a file to it while other processes may be doing the
same at that moment, and checkpointing it off the writer's path.

Why: ``chorus up`` starts the engine, its relay, the projector and the gateway together,
and each opens the same fresh files (the key store, the event store, the read store) and
switches them to WAL. SQLite answers a switch that races another connection's with
"database is locked" at once, without waiting its busy timeout: three threads opening a
fresh key store together failed in 35 of 200 tries, and an engine started beside its relay
died at start-up so. The switch is a one-off per file (WAL is persistent), so retrying it
for a while is the whole fix.

Why checkpoints move: by default the connection whose commit takes the WAL past 1,000
pages copies the WAL back into the database file there and then (``wal_autocheckpoint``).
On the engine that is its writer thread: every 0.25 s or so at 1,000 commands/s one batch
took 8-10 ms instead of about 1 (3.5-4 ms of it CPU, copying pages), and the commands
queued behind it waited as long. The engine's own connections leave the WAL alone
(``leave_checkpoints``) and a connection of its own copies it back every 0.1 s
(``checkpoint``, ``chorus.engine.adapters.walcheckpoints``), which SQLite's documentation
describes for exactly this: a checkpoint runs beside the writer, not in its commit.

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


def leave_checkpoints(conn: sqlite3.Connection) -> None:
    """``conn``'s commits never checkpoint the WAL (another connection must:
    ``checkpoint``); the WAL grows without bound if none does."""
    conn.execute("PRAGMA wal_autocheckpoint=0")


def checkpoint(conn: sqlite3.Connection) -> tuple[int, int]:
    """Copy what it can of the WAL back into the database file without waiting for
    anyone (``PASSIVE``: frames a reader still needs stay for the next time): the frames
    in the WAL and how many of them are in the database file now.

    Once every frame is copied, the writer's next transaction starts the WAL over from its
    beginning, so its file stops growing; ``conn`` is a connection of its own, in
    autocommit mode, that nothing else uses meanwhile."""
    _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames), int(copied)


def prepare_wal(path: str | Path, *, patience: float = PATIENCE) -> None:
    """Switch the file at ``path`` (created if missing) to WAL before a library opens it:
    eventsourcing switches a file only if it is not in WAL yet, and does not retry."""
    conn = sqlite3.connect(path, timeout=patience)
    try:
        use_wal(conn, patience=patience)
    finally:
        conn.close()
