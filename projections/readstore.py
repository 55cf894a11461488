"""The read store: a database of read models plus each projection's position.

A projection writes its rows and its position in one transaction, so after a crash it
resumes exactly where its last commit left it: exactly-once in effect.

Two backends, one projection code: SQLite (``sqlite:///path``, the default: a file next to
the event store) and PostgreSQL (``postgresql://...``, which several gateways on several
hosts can share; ``projections/pgstore.py``). Read models speak the SQL both accept, with
``?`` placeholders, through the small ``Connection`` interface below (``sqlite3``'s own
connection on SQLite). ``ReadStore(url)`` opens the backend the URL names.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeAlias
from urllib.parse import urlparse

from chorus.sqlite_wal import use_wal

TRACKING_DDL = (
    "CREATE TABLE IF NOT EXISTS tracking (name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
)


#: A result row, read by position (``row[0]``) or by column name (``row["name"]``).
Row: TypeAlias = Any


class Cursor(Protocol):
    """What a query returns: rows readable by index and by column name."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection read models use (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...


class ReadModelMissing(Exception):
    """A query met a table that does not exist yet (nothing projected so far)."""


class ReadStoreUnavailable(Exception):
    """The read store cannot be reached (the database server is down or refused us)."""


#: What a query catches when a read model is not created yet: SQLite says so with an
#: OperationalError ("no such table"), PostgreSQL's connection raises ReadModelMissing.
NOT_CREATED: tuple[type[Exception], ...] = (sqlite3.OperationalError, ReadModelMissing)


def is_postgres_url(url: str) -> bool:
    return urlparse(url).scheme in ("postgres", "postgresql")


def read_store_path(url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"the read store must be an sqlite:/// or postgresql:// URL, got {url!r}")
    return Path(url[len("sqlite:///") :])


def upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """An INSERT of every column that replaces the row with the same ``key`` (both backends;
    SQLite's ``INSERT OR REPLACE`` is not PostgreSQL's)."""
    updates = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


class ReadStore:
    """A read store; ``ReadStore(url)`` opens the backend the URL names.

    Connections are one per thread. Beyond reads and transactions, a store makes the
    scratch copies a blue/green rebuild fills (``shadow``) and swaps one in (``swap_in``).
    """

    readonly: bool

    def __new__(cls, url: str, *, readonly: bool = False, **_: Any) -> ReadStore:
        if cls is ReadStore:
            if is_postgres_url(url):
                try:
                    from chorus.projections.pgstore import PostgresReadStore
                except ImportError as error:
                    raise ValueError(
                        "a postgresql:// read store needs psycopg 3: "
                        "pip install 'eventsourcing[postgres]'"
                    ) from error

                return super().__new__(PostgresReadStore)
            return super().__new__(SQLiteReadStore)
        return super().__new__(cls)

    def connection(self) -> Connection:
        raise NotImplementedError

    def transaction(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def position(self, name: str) -> int:
        """Where projection ``name`` stands in the log (0: nothing projected yet)."""
        try:
            row = (
                self.connection()
                .execute("SELECT position FROM tracking WHERE name=?", (name,))
                .fetchone()
            )
        except NOT_CREATED:
            return 0
        return int(row[0]) if row else 0

    def shadow(self, label: str) -> ReadStore:
        """An empty store of the same backend for a rebuild of ``label``; its own (label,
        process, random suffix), so rebuilds of several projections can run at once."""
        raise NotImplementedError

    def swap_in(self, shadow: ReadStore, name: str, tables: Sequence[str], position: int) -> bool:
        """Replace the live ``tables`` and the position of ``name`` with the shadow's, in one
        transaction, unless the live position is already beyond ``position`` (False)."""
        raise NotImplementedError

    def discard(self) -> None:
        """Close and delete this (shadow) store."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


#: The page cache of a rebuild's scratch store: its working set (the rows a batch reads
#: and writes) stays in memory.
SCRATCH_CACHE_KIB = 64 * 1024
#: The page size of a rebuild's scratch store: larger pages than SQLite's 4 KiB hold more
#: of a batch's rows each, so writing a batch splits fewer pages and its commit writes
#: fewer (measured, a batch of 14,000 rows into two tables: inserts 46 -> 38 ms, the
#: commit 4.6 -> 1.6 ms at 64 KiB).
SCRATCH_PAGE_SIZE = 65536


class SQLiteReadStore(ReadStore):
    """An SQLite file; WAL so readers never block the writer. A ``scratch`` store (a
    rebuild's, which nobody reads before its swap and which a crash throws away) keeps its
    journal in memory and never syncs."""

    def __init__(self, url: str, *, readonly: bool = False, scratch: bool = False) -> None:
        self.path = read_store_path(url)
        self.readonly = readonly
        self.scratch = scratch
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
            if self.scratch:
                # No journal at all: a batch that fails fails the rebuild, which deletes
                # the file (``discard``); a rollback is never needed.
                conn.execute(f"PRAGMA page_size={SCRATCH_PAGE_SIZE}")  # before any table
                conn.execute("PRAGMA journal_mode=OFF")
                conn.execute("PRAGMA synchronous=OFF")
                conn.execute(f"PRAGMA cache_size=-{SCRATCH_CACHE_KIB}")
                conn.execute("PRAGMA temp_store=MEMORY")
            elif not self.readonly:
                use_wal(conn)
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

    def shadow(self, label: str) -> SQLiteReadStore:
        path = self.path.with_name(
            f"{self.path.name}.rebuild-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        return SQLiteReadStore(f"sqlite:///{path}", scratch=True)

    def swap_in(self, shadow: ReadStore, name: str, tables: Sequence[str], position: int) -> bool:
        """The shadow file is attached; the live tables are dropped and created again from
        the shadow's definitions, the rows copied by name, and then the indexes created
        (one sort each, cheaper than updating them row by row): a live table written by an
        older definition (other columns, another order) is replaced, never mixed with the
        new."""
        assert isinstance(shadow, SQLiteReadStore)
        conn = self.connection()
        conn.execute("ATTACH DATABASE ? AS shadow", (str(shadow.path),))
        try:
            with self.transaction() as tx:
                if position_in(tx, name) > position:
                    return False
                for table in tables:
                    definitions = tx.execute(
                        "SELECT type, sql FROM shadow.sqlite_master WHERE tbl_name=? "
                        "AND sql IS NOT NULL ORDER BY type='index'",
                        (table,),
                    ).fetchall()
                    columns = ", ".join(
                        f'"{row["name"]}"'
                        for row in tx.execute(f"PRAGMA shadow.table_info({table})")
                    )
                    tx.execute(f"DROP TABLE IF EXISTS main.{table}")
                    for row in definitions:  # unqualified: created in main
                        if row["type"] != "index":
                            tx.execute(row["sql"])
                    tx.execute(
                        f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM shadow.{table}"
                    )
                    for row in definitions:
                        if row["type"] == "index":
                            tx.execute(row["sql"])
                set_position(tx, name, position)
            return True
        finally:
            conn.execute("DETACH DATABASE shadow")

    def discard(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def set_position(conn: Connection, name: str, position: int) -> None:
    conn.execute(
        "INSERT INTO tracking (name, position) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET position=excluded.position",
        (name, position),
    )


def track(conn: Connection, name: str) -> None:
    """Make sure ``name`` has a tracking row (position 0 if new): a writer that checks the
    position locks that row, which must exist to be locked (PostgreSQL)."""
    conn.execute(
        "INSERT INTO tracking (name, position) VALUES (?, 0) ON CONFLICT(name) DO NOTHING",
        (name,),
    )


def position_in(conn: Connection, name: str) -> int:
    """A projection's position as seen inside the caller's transaction, held until it ends:
    SQLite's write transaction holds the whole database; PostgreSQL locks the row, so a
    batch and a rebuild's swap never interleave."""
    sql = "SELECT position FROM tracking WHERE name=?"
    if not isinstance(conn, sqlite3.Connection):
        sql += " FOR UPDATE"
    row = conn.execute(sql, (name,)).fetchone()
    return int(row[0]) if row else 0
