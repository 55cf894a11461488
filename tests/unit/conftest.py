"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import ApplicationRecorder


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


#: Where every test clock starts. Fixed, and never compared with the wall clock: code that
#: measures time takes a clock, and tests pass this one (or a moment derived from it).
CLOCK_START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(CLOCK_START)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/e.db"


@pytest.fixture
def recorder(database_url: str) -> Iterator[ApplicationRecorder]:
    """A real eventsourcing SQLite recorder on a file in the test's tmp_path."""
    rec = open_recorder(database_url)
    yield rec
    close_recorder(rec)
