"""Processes that start together open the same fresh SQLite files at once (``chorus up``
starts the engine, its relay, the projector and the gateway together). Each file's switch
to WAL raced the others' and SQLite answered "database is locked" at once, without its
busy timeout: an engine started beside its relay died at start-up. Here three openers
start at the same instant on a fresh file, many times over; none may fail. (Threads, not
processes: SQLite locks between connections of one process as between processes, and the
race showed so: 35 of 200 rounds failed for the key store before the fix.)"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from chorus.gateway.keys import KeyStore
from chorus.projections.readstore import SQLiteReadStore
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder

ROUNDS = 60
OPENERS = 3


def _key_store(path: Path) -> None:
    KeyStore(path / "keys.db")


def _event_store(path: Path) -> None:
    close_recorder(open_recorder(f"sqlite:///{path}/events.db"))


def _read_store(path: Path) -> None:
    store = SQLiteReadStore(f"sqlite:///{path}/read.db")
    store.close()


@pytest.mark.parametrize("open_it", [_key_store, _event_store, _read_store])
def test_openers_of_a_fresh_file_at_the_same_instant_all_succeed(
    tmp_path: Path, open_it: Callable[[Path], None]
) -> None:
    failures: list[str] = []
    for round_ in range(ROUNDS):
        folder = tmp_path / str(round_)
        folder.mkdir()
        start = threading.Barrier(OPENERS)

        def opener(folder: Path = folder, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                open_it(folder)
            except Exception as error:  # every failure is the finding
                failures.append(f"{folder.name}: {error!r}")

        threads = [threading.Thread(target=opener) for _ in range(OPENERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
