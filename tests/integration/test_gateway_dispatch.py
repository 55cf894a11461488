"""Dispatch over HTTP: the seed's workflow paths, why a workflow waits, an agent's tasks."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from chorus.bootstrap import EngineService
from chorus.projections.runner import ProjectionRunner
from nats.aio.client import Client as NATS

from tests.conftest import Gateway
from tests.integration.test_bus import send
from tests.integration.test_gateway_workflows import wait_for


async def until(http: httpx.AsyncClient, path: str, headers: dict[str, str], check: Any) -> Any:
    for _ in range(500):
        body = (await http.get(path, headers=headers)).json()
        if check(body):
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never showed what was expected: {body}")


async def test_the_seed_paths_answer_with_session_id_message_and_why_a_workflow_waits(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        started = await http.post("/execute-workflow", headers=ops,
                                  json={"requirements": "x", "workflow_type": "review"})  # fmt: skip
        assert started.status_code == 202
        body = started.json()
        wid = body["workflow_id"]
        assert body["session_id"] == wid and body["message"]
        status = await until(http, f"/workflow-status/{wid}", ops,
                             lambda b: b["waiting_for_agent"] is not None)  # fmt: skip
        assert status["session_id"] == wid
        assert status["waiting_for_agent"] == {"phase": "review", "capabilities": []}
        assert "waiting for an online agent" in status["message"]
        unknown = await http.post("/execute-workflow", headers=ops,
                                  json={"requirements": "x", "workflow_type": "nope"})  # fmt: skip
        assert unknown.status_code == 400
        assert unknown.json()["detail"] == "Unknown workflow type: nope"


async def test_an_agent_reads_its_open_tasks_and_no_other_agents(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway, nc: NATS
) -> None:
    ops = gateway.key("ops", "operator")
    own = gateway.key("rev-1", "agent")
    other = gateway.key("rev-2", "agent")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        registered = await http.post("/api/v1/agents", headers=own, json={"name": "rev-1"})
        assert registered.status_code == 201
        wid = (await http.post("/execute-workflow", headers=ops,
                               json={"requirements": "x", "workflow_type": "review"})).json()[
            "workflow_id"]  # fmt: skip
        tasks = await until(http, "/api/v1/agents/rev-1/tasks", own, lambda b: b["items"])
        (item,) = tasks["items"]
        assert (item["task_id"], item["kind"], item["attempt"]) == (f"{wid}/review", "phase", 1)
        assert item["task"]["requirements"] == "x" and item["task"]["kind"] == "phase"
        forbidden = await http.get("/api/v1/agents/rev-1/tasks", headers=other)
        assert forbidden.status_code == 403
        accepted = await send(nc, "rev-1", "accept", {"task_id": f"{wid}/review"}, aggregate="task")
        assert accepted["status"] == "accepted"
        await until(http, "/api/v1/agents/rev-1/tasks", own, lambda b: b["items"][0]["accepted"])
        done = await send(nc, "rev-1", "complete_phase",
                          {"workflow_id": wid, "phase": "review", "result": {"ok": True}},
                          aggregate="workflow")  # fmt: skip
        assert done["status"] == "accepted"
        view = await wait_for(http, ops, wid, lambda b: b["status"] == "completed", "completed")
        assert view["final_result"] == {"ok": True}
        # The agents' read model applies the workflow's end just after the workflows' one.
        await until(http, "/api/v1/agents/rev-1/tasks", own, lambda b: b["items"] == [])
