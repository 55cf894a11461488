"""The read store: an SQLite database of read models plus each projection's position.

A projection writes its rows and its position in one transaction, so after a crash it
resumes exactly where its last commit left it: exactly-once in effect.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TRACKING_DDL = (
    "CREATE TABLE IF NOT EXISTS tracking (name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
)


def read_store_path(url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (the read store is SQLite)."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"the read store must be an sqlite:/// URL, got {url!r}")
    return Path(url[len("sqlite:///") :])


class ReadStore:
    """Connections to the read store: one per thread, WAL so readers never block the writer."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.path = read_store_path(url)
        self.readonly = readonly
        self._local = threading.local()
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.transaction() as conn:
                conn.execute(TRACKING_DDL)

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            if not self.readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def position(self, name: str) -> int:
        try:
            row = (
                self.connection()
                .execute("SELECT position FROM tracking WHERE name=?", (name,))
                .fetchone()
            )
        except sqlite3.OperationalError:  # not created yet: nothing projected
            return 0
        return int(row[0]) if row else 0

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def set_position(conn: sqlite3.Connection, name: str, position: int) -> None:
    conn.execute(
        "INSERT INTO tracking (name, position) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET position=excluded.position",
        (name, position),
    )


def position_in(conn: sqlite3.Connection, name: str, schema: str = "main") -> int:
    """A projection's position as seen inside the caller's transaction."""
    row = conn.execute(f"SELECT position FROM {schema}.tracking WHERE name=?", (name,)).fetchone()
    return int(row[0]) if row else 0
