"""The read store on PostgreSQL (``postgresql://user:pw@host:port/db[?schema=name]``).

Read models are written once, in the SQL SQLite and PostgreSQL both accept; this module
carries the few spellings that differ, so no projection has a second copy:

- placeholders: ``?`` becomes ``%s`` (and a literal ``%`` is doubled), outside quoted
  strings, identifiers and comments; statements are prepared by psycopg once reused;
- column types in ``CREATE TABLE``: SQLite's ``INTEGER`` is 64-bit, PostgreSQL's is not
  (``BIGINT``); SQLite's ``REAL`` is a double, PostgreSQL's is not (``DOUBLE PRECISION``);
  ``WITHOUT ROWID`` is SQLite's storage hint only;
- rows: readable by index and by column name, as ``sqlite3.Row``;
- errors: a missing table is ``ReadModelMissing``, a server out of reach
  ``ReadStoreUnavailable``.

The read models live in one schema (``?schema=``, created if missing; else the
connection's current schema, ``public`` by default). A blue/green rebuild fills a scratch
schema of its own and swaps its tables in with ``ALTER TABLE ... SET SCHEMA``: DDL is
transactional here, so queries see the old tables or the new, never a mix.

Needs the ``postgres`` extra (psycopg 3, which eventsourcing's PostgreSQL recorder uses).
"""

from __future__ import annotations

import functools
import os
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import psycopg
from chorus.projections.readstore import (
    TRACKING_DDL,
    ReadModelMissing,
    ReadStore,
    ReadStoreUnavailable,
    position_in,
    set_position,
)
from psycopg import errors as pg_errors

#: Quoted strings, quoted identifiers and comments pass through; ``?`` and ``%`` do not.
_TOKENS = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*)|(\?)|(%)""")
_DDL_TYPES = (
    (re.compile(r"\bINTEGER\b", re.IGNORECASE), "BIGINT"),
    (re.compile(r"\bREAL\b", re.IGNORECASE), "DOUBLE PRECISION"),
    (re.compile(r"\)\s*WITHOUT\s+ROWID\s*$", re.IGNORECASE), ")"),
)
_CREATE_TABLE = re.compile(r"^\s*CREATE\s+TABLE\b", re.IGNORECASE)
_LOCK = threading.Lock()  # guards each store's list of connections
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """One read-model statement in PostgreSQL's spelling (see the module docstring)."""

    def token(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(1).replace("%", "%%")
        return "%s" if match.group(2) else "%%"

    if _CREATE_TABLE.match(sql):
        for pattern, replacement in _DDL_TYPES:
            sql = pattern.sub(replacement, sql)
    return _TOKENS.sub(token, sql)


class Row:
    """A result row read by position (``row[0]``) or by column name (``row["name"]``)."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return tuple(self._values) == tuple(other._values)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._values))

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=False))!r})"


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except pg_errors.UndefinedTable as error:
        raise ReadModelMissing(str(error)) from error
    except (psycopg.OperationalError, psycopg.InterfaceError) as error:
        raise ReadStoreUnavailable(str(error)) from error


class PostgresConnection:
    """A psycopg connection that takes read-model SQL (``Connection`` in readstore)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Row]:
        cursor = self.raw.cursor(row_factory=_row_factory)
        with _translated_errors():
            cursor.execute(translate(sql), parameters)
        return cursor

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> psycopg.Cursor[Row]:
        cursor = self.raw.cursor(row_factory=_row_factory)
        with _translated_errors():
            cursor.executemany(translate(sql), parameters)
        return cursor


def _split_url(url: str) -> tuple[str, str | None]:
    """The libpq URL without our ``schema`` parameter, and that schema."""
    parts = urlparse(url)
    query = parse_qs(parts.query)
    schema = query.pop("schema", [None])[0]
    if schema is not None and not _IDENTIFIER.match(schema):
        raise ValueError(f"invalid read store schema {schema!r} (letters, digits, _)")
    return urlunparse(parts._replace(query=urlencode(query, doseq=True))), schema


class PostgresReadStore(ReadStore):
    """Read models in a PostgreSQL schema; one connection per thread (autocommit, so a
    query sees every committed batch; a ``transaction`` holds the projection's writes)."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        self.conninfo, schema = _split_url(url)
        self.readonly = readonly
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        # A store dropped without close() still closes its connections (every thread's).
        weakref.finalize(self, _close_all, self._all)
        if schema is None:
            with _translated_errors(), psycopg.connect(self.conninfo) as conn:
                row = conn.execute("SELECT current_schema()").fetchone()
            schema = str(row[0]) if row and row[0] else "public"
        self.schema = schema
        if not readonly:
            with self.transaction() as conn:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                conn.execute(TRACKING_DDL)

    def connection(self) -> PostgresConnection:
        conn: PostgresConnection | None = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed:
            options = f"-c search_path={self.schema}"
            if self.readonly:
                options += " -c default_transaction_read_only=on"
            with _translated_errors():
                raw = psycopg.connect(self.conninfo, autocommit=True, options=options)
            conn = self._local.conn = PostgresConnection(raw)
            with _LOCK:
                self._all[:] = [c for c in self._all if not c.closed]
                self._all.append(raw)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[PostgresConnection]:
        conn = self.connection()
        with _translated_errors(), conn.raw.transaction():
            yield conn

    def shadow(self, label: str) -> PostgresReadStore:
        name = f"rebuild_{label}_{os.getpid()}_{uuid.uuid4().hex[:8]}"[:63]
        parts = urlparse(self.conninfo)
        query = parse_qs(parts.query)
        query["schema"] = [name]
        return PostgresReadStore(urlunparse(parts._replace(query=urlencode(query, doseq=True))))

    def swap_in(self, shadow: ReadStore, name: str, tables: Sequence[str], position: int) -> bool:
        """Drop the live tables and move the shadow's in (with their indexes); the
        position row is locked first, as every batch of the live projector locks it."""
        assert isinstance(shadow, PostgresReadStore)
        with self.transaction() as tx:
            if position_in(tx, name) > position:
                return False
            for table in tables:
                tx.execute(f'DROP TABLE IF EXISTS "{self.schema}"."{table}"')
                tx.execute(f'ALTER TABLE "{shadow.schema}"."{table}" SET SCHEMA "{self.schema}"')
            set_position(tx, name, position)
        return True

    def discard(self) -> None:
        self.close()
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def close(self) -> None:
        _close_all(self._all)
        self._local = threading.local()


def _close_all(connections: list[psycopg.Connection[Any]]) -> None:
    with _LOCK:
        closing = list(connections)
        connections.clear()
    for raw in closing:
        raw.close()
