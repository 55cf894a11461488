"""Rebuilding the read model in place while the system runs: blue/green, never a wipe."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

from nats.aio.client import Client as NATS

from engine.service import EngineService
from events.store import open_recorder
from projections.readstore import ReadStore
from projections.runner import ProjectionRunner
from projections.sessions import SessionsProjection, get_session
from tests.integration.test_bus import open_payload, send


def rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as conn:
        return {
            "sessions": conn.execute("SELECT * FROM sessions ORDER BY seq").fetchall(),
            "participants": conn.execute(
                "SELECT * FROM session_participants ORDER BY session_id, agent_id"
            ).fetchall(),
        }


async def test_rebuild_in_place_under_load_keeps_queries_answering_and_ends_equal(
    engine: EngineService,
    projector: ProjectionRunner,
    nc: NATS,
    database_url: str,
    read_store_url: str,
    tmp_path: Path,
) -> None:
    first = open_payload(["a1", "a2"])
    await send(nc, "coord", "open", first)
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            payload = open_payload(["a1", "a2"])
            await send(nc, "coord", "open", payload)
            await send(
                nc, "a1", "submit_result", {"session_id": payload["session_id"], "result": {}}
            )

    async def query() -> int:
        """Reads during the rebuild: the first session must never disappear."""
        reads = ReadStore(read_store_url, readonly=True)
        while get_session(reads.connection(), first["session_id"]) is None:  # projector lag
            await asyncio.sleep(0.005)
        seen = most = 0
        while not stop.is_set():
            assert get_session(reads.connection(), first["session_id"]) is not None
            count = reads.connection().execute("SELECT count(*) FROM sessions").fetchone()[0]
            assert count >= most, "sessions vanished from the read model during a rebuild"
            most = count
            seen += 1
            await asyncio.sleep(0.002)
        return seen

    writer = asyncio.create_task(load())
    reader = asyncio.create_task(query())
    await asyncio.sleep(0.3)
    rebuilder = ProjectionRunner(
        open_recorder(database_url), ReadStore(read_store_url), SessionsProjection()
    )
    for _ in range(3):
        await asyncio.to_thread(rebuilder.rebuild)
        await asyncio.sleep(0.1)
    stop.set()
    await writer
    assert await reader > 0

    head = open_recorder(database_url).max_notification_id()
    for _ in range(500):
        if projector.position == head:
            break
        await asyncio.sleep(0.01)
    assert projector.position == head
    reference = ProjectionRunner(
        open_recorder(database_url),
        ReadStore(f"sqlite:///{tmp_path}/reference.db"),
        SessionsProjection(),
    )
    reference.run_to_head()
    live = rows(Path(read_store_url.removeprefix("sqlite:///")))
    assert live == rows(tmp_path / "reference.db")
    assert len(live["sessions"]) > 5
    assert uuid.UUID(first["session_id"])
