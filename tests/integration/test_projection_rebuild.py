"""Rebuilding the read model in place while the system runs: blue/green, never a wipe."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from chorus.bootstrap import EngineService
from chorus.cli import main
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import ProjectionRunner
from chorus.projections.sessions import SessionsProjection, get_session
from chorus.projections.workflows import WorkflowsProjection
from chorus.store.recorder import open_recorder
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.conftest import Gateway, ReadStores
from tests.integration.test_bus import domain_records, open_payload, send
from tests.integration.test_gateway_support import eventually

TABLES = [*SessionsProjection().tables, *WorkflowsProjection().tables]


@pytest.fixture
def read_store_url(read_stores: ReadStores) -> str:
    """Every test here runs on each read-store backend (the gateway reads it too)."""
    return read_stores.url("read")


async def test_rebuild_in_place_under_load_keeps_queries_answering_and_ends_equal(
    engine: EngineService,
    projector: ProjectionRunner,
    nc: NATS,
    database_url: str,
    read_store_url: str,
    read_stores: ReadStores,
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
    reference_url = read_stores.url("reference")
    reference = ProjectionRunner(
        open_recorder(database_url), ReadStore(reference_url), SessionsProjection()
    )
    reference.run_to_head()
    tables = SessionsProjection().tables
    live = read_stores.rows(read_store_url, tables)
    assert live == read_stores.rows(reference_url, tables)
    assert len(live["sessions"]) > 5
    assert uuid.UUID(first["session_id"])


async def test_chorus_project_rebuild_has_no_side_effects_and_serves_every_query(
    engine: EngineService,
    projector: ProjectionRunner,
    gateway: Gateway,
    nc: NATS,
    database_url: str,
    read_store_url: str,
    read_stores: ReadStores,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A rebuild only writes read models: nothing reaches the bus (no feed event, no timer
    command), nothing reaches the event store, and the gateway answers throughout."""
    sessions = []
    for _ in range(20):
        payload = open_payload(["a1", "a2"], timeout=1)  # deadlines pass during the test
        await send(nc, "coord", "open", payload)
        await send(nc, "a1", "submit_result", {"session_id": payload["session_id"], "result": {}})
        sessions.append(payload["session_id"])
    recorder = open_recorder(database_url)

    async def settled() -> bool:
        """Every deadline fired, the relay published all, the projector caught up."""
        head = recorder.max_notification_id()
        timed_out = sum(1 for r in domain_records(database_url) if r.type == "SessionTimedOut")
        stream = await nc.jetstream().stream_info("EVENTS")
        return (
            timed_out == len(sessions)
            and stream.state.last_seq == len(domain_records(database_url))
            and projector.position == head
        )

    await eventually(settled, timeout=30, what="timeouts, relay and projector settling")
    head = recorder.max_notification_id()
    stream_before = (await nc.jetstream().stream_info("EVENTS")).state.last_seq
    on_the_bus: list[str] = []

    async def spy_on(msg: Msg) -> None:
        on_the_bus.append(msg.subject)

    spy = await nc.subscribe("chorus.>", cb=spy_on)

    argv = ["project", "--rebuild", "--database-url", database_url]
    rebuild = asyncio.create_task(
        asyncio.to_thread(main, [*argv, "--read-store-url", read_store_url])
    )
    answered = 0
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        headers = gateway.key("watcher", "operator")
        while not rebuild.done() or answered < 5:
            one = await http.get(f"/api/v1/sessions/{sessions[0]}", headers=headers)
            listed = await http.get("/api/v1/sessions", params={"limit": 500}, headers=headers)
            assert one.status_code == 200, one.text
            assert one.json()["status"] == "timed_out"
            assert len(listed.json()["items"]) == len(sessions)
            answered += 1
    assert await rebuild == 0
    await nc.flush()
    await spy.unsubscribe()

    assert on_the_bus == []
    assert recorder.max_notification_id() == head
    assert (await nc.jetstream().stream_info("EVENTS")).state.last_seq == stream_before
    printed = capsys.readouterr()
    assert "rebuilt sessions" in printed.out
    assert "rebuilt workflows" in printed.out
    assert "events/s" in printed.err  # the progress bar

    reference_url = read_stores.url("reference")
    reference = ReadStore(reference_url)
    for projection in (SessionsProjection(), WorkflowsProjection()):
        ProjectionRunner(recorder, reference, projection).run_to_head()
    assert read_stores.rows(read_store_url, TABLES) == read_stores.rows(reference_url, TABLES)
