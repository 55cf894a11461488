"""``chorus mcp`` under ``chorus up``: the MCP process connects to the secured bus as its
caller, with the caller's own key (a connection without one is refused), and an LLM
agent's whole loop works through it with the SDK's own MCP client: inbox, accept, submit.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import pytest
from mcp import Client, StdioServerParameters
from nats.aio.client import Client as NATS

from tests.integration.test_mcp_registry import stdio
from tests.integration.test_mcp_server import call, refused

from .conftest import ChorusUp, bus_admits, clean_env, cli, free_port, running_chorus, wait_until


@asynccontextmanager
async def chorus_mcp(up: ChorusUp, key: str) -> AsyncIterator[Client]:
    """``chorus mcp`` for ``key`` against ``up``, found by its data directory alone (no NATS
    URL, no shared secret: the key is the bus credential)."""
    assert up.nats_url is not None
    user = key.split("_")[1]
    wait_until(lambda: bus_admits(up.nats_url or "", user, key), 30, "the key's bus user")
    argv = cli("mcp", "--data-dir", str(up.data_dir))
    params = StdioServerParameters(command=argv[0], args=argv[1:], cwd=str(up.log_dir),
                                   env=clean_env(CHORUS_API_KEY=key))  # fmt: skip
    async with Client(params) as client:
        yield client


@pytest.mark.e2e
async def test_chorus_mcp_acts_on_the_secured_bus_with_its_callers_own_key(
    tmp_path: Path,
) -> None:
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    with running_chorus(data_dir, free_port(), workdir) as up:
        async with (
            chorus_mcp(up, up.key("ops", "operator")) as ops,
            chorus_mcp(up, up.key("agent-1")) as agent,
            chorus_mcp(up, up.key("agent-2")) as other,
        ):
            await call(agent, "register_agent", name="agent-1")
            sid = (await call(ops, "open_session", participants=["agent-1"],
                              task={"description": "sum"}))["session_id"]  # fmt: skip
            # The open waited for the sessions read model; the task list is another.
            async with asyncio.timeout(30):
                while not (inbox := await call(agent, "my_tasks"))["items"]:
                    await asyncio.sleep(0.05)
            assert (inbox["agent_id"], [t["task_id"] for t in inbox["items"]]) == ("agent-1", [sid])
            assert (await call(other, "my_tasks"))["items"] == []
            accepted = await call(agent, "accept_task", task_id=sid)
            assert accepted["command_status"] in ("accepted", "duplicate")
            # Another key's MCP process is another actor, on the bus as in the engine.
            outsider = await refused(other, "submit_result", session_id=sid, result={"x": 1})
            assert (outsider["code"], outsider["status"]) == ("not_a_participant", 403)
            done = await call(agent, "submit_result", session_id=sid, result={"sum": 3})
            assert done["command_status"] == "accepted"
            assert (await call(ops, "get_session", session_id=sid))["status"] == "succeeded"


async def bus_call(nc: NATS, actor: str, timeout: float = 60, **payload: Any) -> dict[str, Any]:
    """A raw ``tool.call`` request, as an agent in any language would send it."""
    body = json.dumps({"command_id": uuid.uuid4().hex, "payload": payload}).encode()
    msg = await nc.request(f"chorus.cmd.{actor}.tool.call", body, timeout=timeout)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


@pytest.mark.e2e
async def test_tool_calls_over_the_bus_are_checked_recorded_and_never_block_the_engine(
    tmp_path: Path,
) -> None:
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    with running_chorus(data_dir, free_port(), workdir) as up:
        admin = {"Authorization": f"Bearer {up.admin_key}"}
        async with httpx.AsyncClient(base_url=up.base_url, headers=admin, timeout=60,
                                     trust_env=False) as http:  # fmt: skip
            registered = await http.post("/api/v1/mcp-servers", json={
                "name": "calc", "transport": stdio(), "config": {"timeout_seconds": 10},
                "access": {"roles": ["operator"], "agents": ["agent-1"]},
            })  # fmt: skip
            assert registered.status_code == 201, registered.text
            errors: list[Exception] = []

            async def on_error(error: Exception) -> None:
                errors.append(error)

            nc = await up.bus("agent-1", error_cb=on_error)
            stranger = await up.bus("agent-2")
            try:
                good = await bus_call(nc, "agent-1", server="calc", tool="add",
                                      arguments={"a": 2, "b": 3}, task_id="t-1")  # fmt: skip
                assert good["status"] == "ok", good
                assert good["result"]["result"]["structuredContent"] == {"result": 5}
                bad = await bus_call(nc, "agent-1", server="calc", tool="add", arguments={"a": 2})
                assert (bad["status"], bad["error"]["code"]) == ("rejected", "invalid_arguments")
                denied = await bus_call(stranger, "agent-2", server="calc", tool="add",
                                        arguments={"a": 1, "b": 1})  # fmt: skip
                assert denied["error"]["code"] == "not_authorized"
                # Calling as someone else is refused by the bus itself.
                with pytest.raises(nats.errors.TimeoutError):
                    await bus_call(nc, "agent-2", timeout=2, server="calc", tool="add",
                                   arguments={"a": 1, "b": 1})  # fmt: skip
                assert any("permissions violation" in str(e).lower() for e in errors), errors
                # A hanging server: the call times out in the gateway, the engine goes on.
                hung = asyncio.create_task(bus_call(nc, "agent-1", server="calc", tool="hang"))
                opened = await http.post("/api/v1/sessions", json={
                    "participants": ["agent-1"], "task": {"description": "still here"}})  # fmt: skip
                assert opened.status_code == 201
                assert not hung.done()  # the call has 10 s; a session takes milliseconds
                timed_out = await hung
                assert timed_out["error"]["code"] == "tool_timeout", timed_out
            finally:
                await nc.close()
                await stranger.close()
            # Over chorus mcp, a registered tool is called through the bus as the caller.
            async with chorus_mcp(up, up.key("agent-1")) as agent:
                over_mcp = await call(agent, "call_registered_tool", server="calc", tool="add",
                                      arguments={"a": 1, "b": 1})  # fmt: skip
                assert over_mcp["result"]["structuredContent"] == {"result": 2}
            log = (await http.get("/api/v1/events", params={"limit": 1000})).json()
    called = [e["data"] for e in log["items"] if e["type"] == "ToolCalled"]
    assert [(c["caller"], c["tool"], c["outcome"]) for c in called] == [
        ("agent-1", "add", "ok"),
        ("agent-1", "hang", "timeout"),
        ("agent-1", "add", "ok"),
    ]
    assert called[0]["task_id"] == "t-1"
