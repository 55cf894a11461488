"""The engine's writer leaves the event store's WAL checkpoints to a loop of its own.

A commit that took the WAL past 1,000 pages used to copy it back into the database file on
the writer thread (8-10 ms a quarter of a second at 1,000 commands/s, shared by every command
queued behind it): ``chorus.sqlite_wal``. These run real SQLite files, and a real engine on a
real nats-server.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from chorus.bootstrap import EngineService
from chorus.engine.adapters.walcheckpoints import WalCheckpointer
from chorus.sqlite_wal import leave_checkpoints, use_wal
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder, sqlite_file
from eventsourcing.sqlite import SQLiteApplicationRecorder
from nats.aio.client import Client as NATS

from tests.integration.test_bus import open_payload, send

PAGE = 4096


def _wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    use_wal(conn)
    leave_checkpoints(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
    return conn


def _autocheckpoint(recorder: SQLiteApplicationRecorder) -> list[int]:
    """``wal_autocheckpoint`` of each connection the recorder's pool hands out (several
    held at once, so the pool has to make more than one)."""
    pool = recorder.datastore.pool
    held = [pool.get_connection(is_writer=False) for _ in range(3)]
    try:
        values = []
        for connection in held:
            with connection.cursor() as cursor:
                values.append(int(cursor.execute("PRAGMA wal_autocheckpoint").fetchone()[0]))
        return values
    finally:
        for connection in held:
            pool.put_connection(connection)


async def _until(condition: object, what: str) -> None:
    for _ in range(2000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


async def test_a_writer_that_leaves_checkpoints_grows_the_wal_without_a_checkpointer(
    tmp_path: Path,
) -> None:
    """The premise: with inline checkpoints off, nothing else bounds the WAL."""
    path = tmp_path / "events.db"
    conn = _writer(path)
    for _ in range(40):
        conn.execute("INSERT INTO t (body) VALUES (?)", (b"x" * 50 * PAGE,))
    assert _wal_bytes(path) > 40 * 50 * PAGE
    conn.close()


async def test_the_checkpointer_copies_the_wal_back_so_the_writer_starts_it_over(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    conn = _writer(path)
    checkpointer = WalCheckpointer(str(path), interval=0.001)
    loop = asyncio.create_task(checkpointer.run())
    try:
        for _ in range(40):
            conn.execute("INSERT INTO t (body) VALUES (?)", (b"x" * 50 * PAGE,))
            # The next checkpoint starts after this write: it copies all of it back.
            done = checkpointer.done
            await _until(lambda d=done: checkpointer.done >= d + 2, "a checkpoint after a write")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    # Each write started the WAL over (about one write's worth), instead of 40 writes'.
    assert _wal_bytes(path) < 3 * 50 * PAGE
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 40
    conn.close()


def test_open_recorder_turns_inline_checkpoints_off_only_when_asked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    quiet = open_recorder(url, inline_checkpoints=False)
    usual = open_recorder(url)
    try:
        assert isinstance(quiet, SQLiteApplicationRecorder)
        assert isinstance(usual, SQLiteApplicationRecorder)
        assert _autocheckpoint(quiet) == [0, 0, 0]
        assert _autocheckpoint(usual) == [1000, 1000, 1000]
        assert sqlite_file(quiet) == f"{tmp_path}/events.db"
        # The swapped pool still writes and reads the same store.
        assert quiet.select_notifications(1, 10) == []
    finally:
        close_recorder(quiet)
        close_recorder(usual)


async def test_the_engine_checkpoints_its_wal_beside_its_writer(
    engine: EngineService, nc: NATS, tmp_path: Path
) -> None:
    recorder = engine.recorder
    assert isinstance(recorder, SQLiteApplicationRecorder)
    assert engine.wal_file == f"{tmp_path}/events.db"
    assert _autocheckpoint(recorder) == [0, 0, 0]
    checkpointer = engine.checkpointer
    assert checkpointer is not None
    positions = []
    for _ in range(20):
        reply = await send(nc, "coord", "open", open_payload(["a1", "a2"]))
        assert reply["status"] == "accepted"
        positions.append(reply["position"])
    done = checkpointer.done
    # The second checkpoint from now started after the last reply.
    await _until(lambda: checkpointer.done >= done + 2, "the engine's checkpoints")
    # What the engine wrote is in the database file: a reader that ignores the WAL
    # (immutable: no locks, no WAL) sees the last command's row.
    file = sqlite3.connect(f"file:{tmp_path}/events.db?immutable=1", uri=True)
    try:
        (top,) = file.execute("SELECT max(rowid) FROM stored_events").fetchone()
    finally:
        file.close()
    assert top >= max(positions)
