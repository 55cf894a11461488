"""Chorus as an MCP server over streamable HTTP, driven by the SDK's own MCP client against a
real gateway, engine, projector and nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from chorus.bootstrap import EngineService
from chorus.projections.runner import ProjectionRunner
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Gateway


@asynccontextmanager
async def mcp_client(gateway: Gateway, actor: str, role: str = "agent") -> AsyncIterator[Client]:
    """An MCP client authenticated as a new key of ``actor`` (one key per client)."""
    async with (
        httpx2.AsyncClient(headers=gateway.key(actor, role), timeout=30) as http,
        Client(streamable_http_client(f"{gateway.url}/mcp", http_client=http)) as client,
    ):
        yield client


async def call(client: Client, tool: str, /, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, tool: str, /, **arguments: Any) -> dict[str, Any]:
    """The problem a refused call carries (the same code and status as over HTTP)."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    problem: dict[str, Any] = json.loads(result.content[0].text)  # type: ignore[union-attr]
    return problem


async def test_an_mcp_client_completes_a_session_end_to_end(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    async with (
        mcp_client(gateway, "ops", "operator") as ops,
        mcp_client(gateway, "agent-1") as agent,
        mcp_client(gateway, "agent-2") as stranger,
        mcp_client(gateway, "auditor-1", "auditor") as auditor,
    ):
        names = {t.name for t in (await agent.list_tools()).tools}
        assert {"open_session", "submit_result", "get_session", "complete_phase"} <= names
        registered = await call(
            agent, "register_agent", name="agent-1", capabilities=["py", "tool:calc/add"]
        )
        assert registered["owner"] == "agent-1"
        assert (await call(agent, "heartbeat"))["agent_id"] == "agent-1"
        opened = await call(
            ops, "open_session", participants=["agent-1"], task={"description": "add"}
        )
        sid = opened["session_id"]
        assert opened["status"] == "open"

        outsider = await refused(stranger, "submit_result", session_id=sid, result={"x": 1})
        assert (outsider["code"], outsider["status"]) == ("not_a_participant", 403)
        read_only = await refused(
            auditor, "open_session", participants=["agent-1"], task={"description": "no"}
        )
        assert (read_only["code"], read_only["status"]) == ("forbidden", 403)
        bad = await refused(agent, "submit_result", session_id="not-a-uuid", result={})
        assert bad["code"] == "invalid_command"

        submitted = await call(agent, "submit_result", session_id=sid, result={"sum": 3})
        assert submitted["command_status"] == "accepted"
        view = await call(auditor, "get_session", session_id=sid)
        assert view["status"] == "succeeded"
        resource = await auditor.read_resource(f"chorus://sessions/{sid}")
        assert json.loads(resource.contents[0].text)["status"] == "succeeded"  # type: ignore[union-attr]
        listed = await call(ops, "list_agents", sort="reliability")
        assert [a["agent_id"] for a in listed["items"]] == ["agent-1"]
        by_tool = await call(ops, "list_agents", tool=["calc/add"])
        assert [a["agent_id"] for a in by_tool["items"]] == ["agent-1"]
        assert (await call(ops, "list_agents", tool=["calc/hang"]))["items"] == []


async def test_an_mcp_client_runs_a_workflow_phase_and_others_are_refused(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    async with (
        mcp_client(gateway, "ops", "operator") as ops,
        mcp_client(gateway, "agent-1") as agent,
        mcp_client(gateway, "agent-2") as other,
    ):
        started = await call(ops, "start_workflow", requirements="ship", workflow_type="quick")
        wid = started["workflow_id"]
        assert started["status"] == "queued"
        # The starter assigns the phase; the agent cannot take it over by itself.
        takeover = await refused(agent, "start_phase", workflow_id=wid, phase="implement")
        assert takeover["code"] == "not_authorized"
        await call(ops, "start_phase", workflow_id=wid, phase="implement", assignee="agent-1")
        await call(agent, "report_progress", workflow_id=wid, phase="implement", progress=40)
        partial = await call(
            agent, "record_partial_result", workflow_id=wid, phase="implement", result={"f": 1}
        )
        assert partial["partial_results"] == {"implement": [{"f": 1}]}
        wrong_actor = await refused(
            other, "complete_phase", workflow_id=wid, phase="implement", result={}
        )
        assert wrong_actor["code"] == "not_assigned"
        done = await call(agent, "complete_phase", workflow_id=wid, phase="implement",
                          result={"pr": 7})  # fmt: skip
        assert done["phases_completed"] == ["implement"]
        status = await call(ops, "workflow_status", workflow_id=wid)
        assert status["current_phase"] is None or status["current_phase"] != "implement"


async def test_mcp_over_http_needs_a_valid_api_key(gateway: Gateway) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx2.AsyncClient(base_url=gateway.url) as http:
        anonymous = await http.post("/mcp", json=body)
        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == "unauthenticated"
        forged = await http.post("/mcp", json=body, headers={"Authorization": "Bearer chk_x_y"})
        assert forged.status_code == 401


async def test_a_jwt_works_over_mcp_and_an_agent_sees_and_accepts_its_tasks(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    async with httpx2.AsyncClient(base_url=gateway.url) as http:
        issued = await http.post("/api/v1/auth/token", headers=gateway.key("agent-1"))
        assert issued.status_code == 200, issued.text
        token = issued.json()["access_token"]
    async with (
        mcp_client(gateway, "ops", "operator") as ops,
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(f"{gateway.url}/mcp", http_client=http)) as agent,
    ):
        await call(agent, "register_agent", name="agent-1")
        sid = (await call(ops, "open_session", participants=["agent-1"],
                          task={"description": "d"}))["session_id"]  # fmt: skip
        # The open waited for the sessions read model; the agent's task list is another
        # read model, which may be a moment behind it.
        async with asyncio.timeout(30):
            while not (tasks := await call(agent, "my_tasks"))["items"]:
                await asyncio.sleep(0.05)
        assert tasks["agent_id"] == "agent-1"
        assert [t["task_id"] for t in tasks["items"]] == [sid]
        accepted = await call(agent, "accept_task", task_id=sid)
        assert accepted["command_status"] in ("accepted", "duplicate")
        assert (await call(ops, "my_tasks"))["items"] == []
