"""Workflows driven over the bus by agents on raw NATS, against a real nats-server and store."""

from __future__ import annotations

import uuid
from typing import Any

from chorus.bootstrap import EngineService
from nats.aio.client import Client as NATS

from tests.integration.test_bus import domain_records, send


async def workflow(nc: NATS, actor: str, command: str, payload: dict[str, Any]) -> dict[str, Any]:
    return await send(nc, actor, command, payload, aggregate="workflow")


async def test_agents_drive_a_workflow_phase_by_phase_to_completion(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    wid = str(uuid.uuid4())
    started = await workflow(nc, "ops", "start", {
        "workflow_id": wid, "requirements": "ship it", "workflow_type": "quick", "priority": "high",
    })  # fmt: skip
    assert started["status"] == "accepted"
    for phase, agent in (("implement", "agent-1"), ("test", "agent-2")):
        assign = {"workflow_id": wid, "phase": phase, "assignee": agent}
        assert (await workflow(nc, "ops", "start_phase", assign))["status"] == "accepted"
        for progress in (30, 80):
            reply = await workflow(
                nc,
                agent,
                "report_progress",
                {"workflow_id": wid, "phase": phase, "progress": progress},
            )
            assert reply["status"] == "accepted"
        done = await workflow(
            nc,
            agent,
            "complete_phase",
            {"workflow_id": wid, "phase": phase, "result": {"phase": phase}},
        )
        assert done["status"] == "accepted"
    types = [r.type for r in domain_records(database_url) if r.aggregate_id == wid]
    assert types[0] == "WorkflowStarted"
    assert types[-2:] == ["PhaseCompleted", "WorkflowCompleted"]


async def test_workflow_rules_are_enforced_with_stable_codes(
    engine: EngineService, nc: NATS
) -> None:
    unknown = await workflow(nc, "ops", "start", {
        "workflow_id": str(uuid.uuid4()), "requirements": "x", "workflow_type": "nope",
    })  # fmt: skip
    assert unknown["error"]["code"] == "unknown_workflow_type"
    bad_priority = await workflow(nc, "ops", "start", {
        "workflow_id": str(uuid.uuid4()), "requirements": "x", "workflow_type": "quick",
        "priority": "urgent",
    })  # fmt: skip
    assert bad_priority["error"]["code"] == "invalid_command"
    wid = str(uuid.uuid4())
    await workflow(
        nc, "ops", "start", {"workflow_id": wid, "requirements": "x", "workflow_type": "quick"}
    )
    takeover = await workflow(
        nc, "agent-9", "start_phase", {"workflow_id": wid, "phase": "implement"}
    )
    assert takeover["error"]["code"] == "not_authorized"
    await workflow(
        nc, "ops", "start_phase", {"workflow_id": wid, "phase": "implement", "assignee": "agent-1"}
    )
    stranger = await workflow(
        nc, "agent-9", "complete_phase", {"workflow_id": wid, "phase": "implement"}
    )
    assert stranger["error"]["code"] == "not_assigned"
    wrong = await workflow(nc, "agent-1", "complete_phase", {"workflow_id": wid, "phase": "test"})
    assert wrong["error"]["code"] == "phase_not_current"
    cancelled = await workflow(nc, "ops", "cancel", {"workflow_id": wid, "reason": "changed plans"})
    assert cancelled["status"] == "accepted"
    closed = await workflow(
        nc, "agent-1", "report_progress", {"workflow_id": wid, "phase": "implement", "progress": 5}
    )
    assert closed["error"]["code"] == "workflow_closed"
