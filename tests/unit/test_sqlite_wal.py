"""``use_wal`` retries only "locked", and only for its patience (a fake connection and clock)."""

from __future__ import annotations

import sqlite3

import pytest
from chorus.sqlite_wal import use_wal


class _Conn:
    """Answers the switch with the given errors, then succeeds."""

    def __init__(self, *errors: sqlite3.OperationalError) -> None:
        self.errors = list(errors)
        self.tries = 0

    def execute(self, sql: str) -> _Conn:
        assert sql == "PRAGMA journal_mode=WAL"
        self.tries += 1
        if self.errors:
            raise self.errors.pop(0)
        return self

    def fetchall(self) -> list[tuple[str]]:
        return [("wal",)]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _locked() -> sqlite3.OperationalError:
    return sqlite3.OperationalError("database is locked")


def test_a_locked_switch_is_tried_again_until_it_succeeds() -> None:
    conn, clock = _Conn(_locked(), _locked(), _locked()), _Clock()
    use_wal(conn, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert conn.tries == 4
    assert clock.slept == sorted(clock.slept)  # backing off, never faster


def test_it_gives_up_after_its_patience() -> None:
    conn, clock = _Conn(*[_locked() for _ in range(1000)]), _Clock()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        use_wal(conn, patience=1.0, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert 1.0 <= clock.now < 1.2
    assert max(clock.slept) <= 0.1


def test_any_other_error_is_raised_at_once() -> None:
    conn, clock = _Conn(sqlite3.OperationalError("disk I/O error")), _Clock()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        use_wal(conn, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert conn.tries == 1
    assert clock.slept == []
