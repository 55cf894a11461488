"""``Table.write_rows`` writes on SQLite with statements of many rows what one statement a
row writes (inserts, upserts that replace, inserts that keep what is there), across the
chunks its parameter limit cuts; ``Table.in_order`` orders keys as ``sorted`` does."""

from __future__ import annotations

import random
import sqlite3
from typing import Any

from chorus.projections.tables import RowDict, Table

DDL = "CREATE TABLE t (a TEXT NOT NULL, b INTEGER NOT NULL, c TEXT, d REAL, PRIMARY KEY (a, b))"
T = Table("t", ("a", "b", "c", "d"), key=("a", "b"))
KEEP = Table("t", ("a", "b", "c", "d"), key=("a", "b"), insert_only=True)


def store() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(DDL)
    return conn


def rows(rng: random.Random, n: int, tag: str) -> list[RowDict]:
    """``n`` rows of distinct keys, with NULLs, floats and text."""
    keys = rng.sample([(f"k{i % 37}", i) for i in range(4 * n)], n)
    return [
        {"a": a, "b": b, "c": rng.choice([None, f"{tag}{b}", ""]), "d": rng.choice([None, b / 7])}
        for a, b in keys
    ]


def contents(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM t ORDER BY a, b").fetchall()


def one_statement_a_row(
    conn: sqlite3.Connection, table: Table, sql: str, batch: list[RowDict]
) -> None:
    conn.executemany(sql, map(table.values_of, batch))


def test_many_rows_a_statement_write_what_one_statement_a_row_writes() -> None:
    rng = random.Random(7)
    before = rows(rng, 500, "old")
    # 1,000 rows of 4 columns: three statements of 249 rows and a shorter fourth.
    batch = rows(rng, 1000, "new")
    for table, sql, there in (
        (T, T.insert_sql, []),
        (T, T.upsert_sql, before),  # replaces the rows already there
        (KEEP, KEEP.upsert_sql, before),  # keeps them
    ):
        many, single = store(), store()
        for conn in (many, single):
            one_statement_a_row(conn, T, T.insert_sql, there)
        table.write_rows(many, sql, batch)
        one_statement_a_row(single, table, sql, batch)
        assert contents(many) == contents(single)
        assert len(contents(many)) >= len(batch)


def test_an_empty_batch_writes_nothing() -> None:
    conn = store()
    T.write_rows(conn, T.insert_sql, [])
    assert contents(conn) == []


def test_keys_in_order_are_the_sorted_keys() -> None:
    rng = random.Random(3)
    keys = [(rng.choice("abc") * rng.randint(1, 3), rng.randint(0, 9)) for _ in range(500)]
    assert T.in_order(keys) == sorted(keys)
    assert T.in_order(dict.fromkeys(keys)) == sorted(set(keys))
    # A column whose values do not compare one by one: the tuples' own order.
    mixed = [("x", None), ("a", 2), ("x", None)]
    assert T.in_order(mixed) == [("a", 2), ("x", None), ("x", None)]
