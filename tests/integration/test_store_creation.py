"""Opening a fresh event store from many processes and threads at once.

On PostgreSQL, ``CREATE TABLE IF NOT EXISTS``, ``CREATE TYPE`` and ``CREATE OR REPLACE
FUNCTION`` are not safe to run concurrently (a loser fails with a unique violation on
``pg_type`` or "tuple concurrently updated"); an engine, a projector and a gateway starting
together on a new schema must all come up. The processes here meet at a barrier right
before they open the store, so their table creation overlaps.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from chorus.audit.ledger import ensure_ledger
from chorus.store import tracecontext
from chorus.store.checkpoints import Checkpoint, CheckpointStore
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder
from chorus.store.snapshots import snapshot_recorder

from tests.postgres import database_url

WORKERS = 6


def open_everything(url: str, name: str) -> None:
    """What a process starting on the store creates: the events table (with its type,
    index and function), snapshots, checkpoints, seals and trace contexts."""
    recorder = open_recorder(url)
    try:
        snapshot_recorder(recorder)
        ensure_ledger(recorder)
        tracecontext.ensure_table(recorder)
        store = CheckpointStore(recorder)
        store.save(Checkpoint(name, 1, "v1", b"state"))
        assert store.load(name) is not None
    finally:
        close_recorder(recorder)


def _process(url: str, name: str, barrier: Any, errors: Any) -> None:
    try:
        barrier.wait()
        open_everything(url, name)
    except BaseException as error:
        errors.put(f"{name}: {type(error).__name__}: {error}")
        raise


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_processes_opening_a_fresh_store_at_once_all_come_up(backend: str, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with database_url(backend, tmp_path) as url:
        barrier = context.Barrier(WORKERS)
        errors = context.Queue()
        procs = [
            context.Process(target=_process, args=(url, f"p{i}", barrier, errors))
            for i in range(WORKERS)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        assert failures == []
        assert [p.exitcode for p in procs] == [0] * WORKERS


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_threads_creating_tables_on_one_fresh_store_at_once_all_succeed(
    backend: str, tmp_path: Path
) -> None:
    """One engine's process managers each open their checkpoint store on first use, on
    threads of their own, against the one recorder."""
    with database_url(backend, tmp_path) as url:
        recorder = open_recorder(url)
        barrier = threading.Barrier(WORKERS)

        def manager(i: int) -> None:
            barrier.wait()
            if i % 3 == 0:
                snapshot_recorder(recorder)
            store = CheckpointStore(recorder)
            store.save(Checkpoint(f"m{i}", i, "v1", b""))

        try:
            with ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(manager, range(WORKERS)))
            names = {f"m{i}" for i in range(WORKERS)}
            store = CheckpointStore(recorder)
            assert {n for n in names if store.load(n) is not None} == names
        finally:
            close_recorder(recorder)
