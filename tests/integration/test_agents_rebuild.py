"""The agents read model is a pure fold of the log: a replay from zero equals the live one,
and a blue/green rebuild in place leaves it row for row the same."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from chorus.bootstrap import EngineService
from chorus.engine.domain.evidence import result_hash
from chorus.projections.agents import TABLES, AgentsProjection
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import ProjectionRunner
from chorus.store.recorder import open_recorder
from nats.aio.client import Client as NATS

from tests.conftest import ReadStores
from tests.integration.test_bus import open_payload, send


@pytest.fixture
def read_store_url(read_stores: ReadStores) -> str:
    """Every test here runs on each read-store backend (the gateway reads it too)."""
    return read_stores.url("read")


async def agent(nc: NATS, actor: str, command: str, payload: dict[str, Any]) -> dict[str, Any]:
    reply = await send(nc, actor, command, payload, aggregate="agent")
    assert reply["status"] == "accepted", reply
    return reply


async def test_agents_rebuild_equals_the_live_read_model(
    engine: EngineService, nc: NATS, database_url: str, read_store_url: str, read_stores: ReadStores
) -> None:
    for name in ("a1", "a2", "a3"):
        await agent(nc, name, "register", {"name": name, "capabilities": ["python"]})
    await agent(nc, "a2", "update_capabilities", {"agent_id": "a2", "capabilities": ["sql"]})
    session = open_payload(["a1", "a2"])
    await send(nc, "coord", "open", session)
    sid = session["session_id"]
    submitted = await send(nc, "a1", "submit_result", {"session_id": sid, "result": {"n": 1}})
    assert submitted["status"] == "accepted"
    for output_hash in ("wrong", None):  # rejected, then verified
        await agent(nc, "a1", "verify_completion", {
            "agent_id": "a1", "task_id": sid, "completion_time": datetime.now(UTC).isoformat(),
            "output_hash": output_hash or result_hash({"n": 1}),
        })  # fmt: skip
    wid = str(uuid.uuid4())
    for actor, command, payload in (
        ("ops", "start", {"workflow_id": wid, "requirements": "x", "workflow_type": "quick"}),
        # by the starter's hand: the dispatcher may have offered it to another agent
        ("ops", "start_phase", {"workflow_id": wid, "phase": "implement", "assignee": "a3"}),
        ("a3", "report_progress", {"workflow_id": wid, "phase": "implement", "progress": 50}),
    ):
        reply = await send(nc, actor, command, payload, aggregate="workflow")
        assert reply["status"] == "accepted", reply
    await agent(nc, "a2", "retire", {"agent_id": "a2"})

    # The live projector, started after the fact, catches up; then a replay from zero into
    # a fresh store and a rebuild in place must both equal it.
    live = ProjectionRunner(open_recorder(database_url), ReadStore(read_store_url),
                            AgentsProjection())  # fmt: skip
    head = open_recorder(database_url).max_notification_id()
    while live.position < head:
        await asyncio.to_thread(live.run_to_head)
    before = read_stores.rows(read_store_url, TABLES)
    reference_url = read_stores.url("reference")
    reference = ProjectionRunner(
        open_recorder(database_url), ReadStore(reference_url), AgentsProjection()
    )
    reference.run_to_head()
    assert read_stores.rows(reference_url, TABLES) == before

    await asyncio.to_thread(live.rebuild)
    assert read_stores.rows(read_store_url, TABLES) == before
    assert len(before["agents"]) == 3
    assert len(before["agent_verdicts"]) == 2
    assert {r[1] for r in before["agent_assignments"]} == {sid, f"{wid}/implement"}
