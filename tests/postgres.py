"""A PostgreSQL schema of its own for a test, on the server ``CHORUS_TEST_POSTGRES_URL``
names (``.ci/run`` starts one); the test is skipped when none is named."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def postgres_schema(prefix: str = "t") -> Iterator[str]:
    """The server's URL with ``?schema=`` a fresh schema, dropped (with its tables) after."""
    base = os.environ.get("CHORUS_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("CHORUS_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base}?schema={schema}"
    finally:
        # The test's recorders are garbage now: collect them here, in the main thread. Left
        # to chance, a PostgreSQL datastore's __del__ may run in one of its own pool's
        # worker threads, whose close() then cannot join itself (an unraisable error that
        # fails whichever test happens to be running).
        gc.collect()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An event store's URL on ``backend`` (``sqlite`` or ``postgres``) for one test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/events.db"
        return
    with postgres_schema() as url:
        yield url
