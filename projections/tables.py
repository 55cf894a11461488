"""A read-model table as ``projections.pending`` handles it: its key, its group, and the
statements that read and write its rows, derived once; the simple conditions (column =
value, None for IS NULL) ``Pending.update_where`` / ``delete_where`` take; and the writing
of many rows at once (``Table.write_rows``)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from itertools import chain, islice
from operator import itemgetter
from typing import Any

from chorus.projections.readstore import Connection

#: A row as a read model changes it: column name -> value.
RowDict = dict[str, Any]
Key = tuple[Any, ...]


@dataclass(frozen=True, eq=False)
class Table:
    """A read-model table as ``Pending`` handles it.

    ``key`` identifies a row (the primary key, or a unique column). ``group``, one of the
    key's columns, names rows read together: the first read of a row of a group reads
    the whole group (a session's participants). ``insert_only``: rows only ever inserted
    when absent and never read within a batch (activity marks); written with
    ``ON CONFLICT DO NOTHING``."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    group: str | None = None
    insert_only: bool = False
    key_of: Callable[[RowDict], Key] = field(init=False, repr=False)
    #: Where ``group`` is in ``key`` (-1: no group).
    group_at: int = field(init=False, repr=False)
    #: A row's values in ``columns`` order (the parameters of an insert).
    values_of: Callable[[RowDict], tuple[Any, ...]] = field(init=False, repr=False)
    #: The columns not in the key (what an update of a whole row sets).
    values: frozenset[str] = field(init=False, repr=False)
    select_sql: str = field(init=False, repr=False)
    insert_sql: str = field(init=False, repr=False)
    upsert_sql: str = field(init=False, repr=False)
    delete_sql: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = ", ".join(self.columns)
        marks = ", ".join("?" * len(self.columns))
        where = " AND ".join(f"{k}=?" for k in self.key)
        updates = ", ".join(f"{c}=excluded.{c}" for c in self.columns if c not in self.key)
        conflict = f"DO UPDATE SET {updates}" if updates and not self.insert_only else "DO NOTHING"
        set_ = object.__setattr__  # frozen: the statements are derived once, here
        set_(self, "values", frozenset(self.columns) - frozenset(self.key))
        set_(self, "select_sql", f"SELECT {names} FROM {self.name} WHERE ")
        set_(self, "insert_sql", f"INSERT INTO {self.name} ({names}) VALUES ({marks})")
        set_(self, "upsert_sql", f"INSERT INTO {self.name} ({names}) VALUES ({marks}) "
                                 f"ON CONFLICT ({', '.join(self.key)}) {conflict}")  # fmt: skip
        set_(self, "delete_sql", f"DELETE FROM {self.name} WHERE {where}")
        set_(self, "key_of", tuple_getter(self.key))
        set_(self, "group_at", -1 if self.group is None else self.key.index(self.group))
        set_(self, "values_of", tuple_getter(self.columns))

    def in_order(self, keys: Collection[Key]) -> list[Key]:
        """``keys`` sorted, a column at a time (stable sorts, the last column first):
        Python compares tuples element by element through rich comparison, and sorting a
        rebuild's batch of 20,000 keys that way was 5% of a rebuild (profiled); a column
        at a time compares plain strings or integers, 2-3x faster. The order makes writes
        fill B-tree pages one after another; what is written does not depend on it."""
        ordered = list(keys)
        try:
            for column in reversed(range(len(self.key))):
                ordered.sort(key=itemgetter(column))
        except TypeError:  # a column of values that do not compare (None beside text)
            ordered.sort()
        return ordered

    def write_rows(self, conn: Connection, sql: str, rows: Iterable[RowDict]) -> None:
        """``sql`` (``insert_sql`` or ``upsert_sql``) for each of ``rows``. On SQLite, in as
        few statements of many rows (``VALUES (...), (...), ...``) as its parameter limit
        allows: ``executemany`` steps the statement once a row, which cost more than the
        rows' inserts themselves (20,000 rows: 65 against 37 ms, measured). Elsewhere
        ``executemany`` (psycopg pipelines it: one round trip)."""
        values = map(self.values_of, rows)
        if not isinstance(conn, sqlite3.Connection):
            conn.executemany(sql, values)
            return
        per = max(1, _PARAMETERS // len(self.columns))
        while chunk := list(islice(values, per)):
            conn.execute(
                _many_rows(sql, len(self.columns), len(chunk)), list(chain.from_iterable(chunk))
            )

    def update_sql(self, columns: tuple[str, ...]) -> str:
        """An UPDATE of these columns of one row, by key (parameters: values, then key)."""
        return _update_sql(self.name, columns, self.key)


#: Parameters per statement of ``Table.write_rows`` (SQLite before 3.32 takes 999 at most).
_PARAMETERS = 999


@functools.lru_cache(maxsize=128)  # a batch's last statement has any number of rows
def _many_rows(sql: str, width: int, rows: int) -> str:
    """A one-row ``INSERT ... VALUES (?, ...)`` as one of ``rows`` rows."""
    one = f"({', '.join('?' * width)})"
    return sql.replace(f"VALUES {one}", "VALUES " + ", ".join([one] * rows), 1)


@functools.cache
def tuple_getter(columns: tuple[str, ...]) -> Callable[[RowDict], tuple[Any, ...]]:
    """``itemgetter`` that returns a tuple for one column too."""
    if len(columns) == 1:
        only = columns[0]
        return lambda row: (row[only],)
    return itemgetter(*columns)


@functools.cache
def _update_sql(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c}=?" for c in columns)
    return f"UPDATE {table} SET {sets} WHERE {' AND '.join(f'{k}=?' for k in key)}"


def condition(where: dict[str, Any]) -> tuple[str, list[Any]]:
    """``where`` (column -> value; None means IS NULL) as SQL and its parameters."""
    parts, params = [], []
    for column, value in where.items():
        if value is None:
            parts.append(f"{column} IS NULL")
        else:
            parts.append(f"{column}=?")
            params.append(value)
    return " AND ".join(parts), params


def matches(row: RowDict, where: dict[str, Any]) -> bool:
    return all(row[column] == value for column, value in where.items())
