"""``chorus mcp`` under ``chorus up``: the MCP process connects to the secured bus as its
caller, with the caller's own key (a connection without one is refused), and an LLM
agent's whole loop works through it with the SDK's own MCP client: inbox, accept, submit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

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
            inbox = await call(agent, "my_tasks")
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
