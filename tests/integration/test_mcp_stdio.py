"""``chorus mcp`` over stdio, driven by the SDK's MCP client: the process acts as the actor
of its API key, against a real engine, projector and nats-server."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from chorus.bootstrap import EngineService
from chorus.gateway.keys import KeyStore
from chorus.projections.runner import ProjectionRunner
from mcp import Client, StdioServerParameters

from tests.conftest import NatsEndpoint
from tests.integration.test_mcp_server import call, refused


@asynccontextmanager
async def chorus_mcp(env: dict[str, str], key: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "chorus.cli", "mcp"],
        env={**os.environ, **env, "CHORUS_API_KEY": key},
    )
    async with Client(params) as client:
        yield client


async def test_chorus_mcp_over_stdio_acts_as_its_key(
    engine: EngineService,
    projector: ProjectionRunner,
    nats_server: NatsEndpoint,
    database_url: str,
    read_store_url: str,
    tmp_path: Path,
) -> None:
    keys = KeyStore(tmp_path / "keys.db")
    env = {
        "CHORUS_NATS_URL": nats_server.url,
        "CHORUS_DATABASE_URL": database_url,
        "CHORUS_READ_STORE_URL": read_store_url,
        "CHORUS_KEYS_PATH": str(tmp_path / "keys.db"),
        "CHORUS_DATA_DIR": str(tmp_path / "data"),
    }
    agent_key = keys.create("agent-1", "agent")
    async with (
        chorus_mcp(env, keys.create("ops", "operator")) as ops,
        chorus_mcp(env, agent_key) as agent,
    ):
        await call(agent, "register_agent", name="agent-1")
        sid = (
            await call(ops, "open_session", participants=["agent-1"], task={"description": "x"})
        )["session_id"]
        not_mine = await refused(ops, "submit_result", session_id=sid, result={"y": 1})
        assert not_mine["code"] == "not_a_participant"
        await call(agent, "submit_result", session_id=sid, result={"y": 1})
        assert (await call(ops, "get_session", session_id=sid))["status"] == "succeeded"
        wid = (await call(ops, "start_workflow", requirements="r", workflow_type="quick"))[
            "workflow_id"
        ]
        await call(ops, "start_phase", workflow_id=wid, phase="implement", assignee="agent-1")
        done = await call(agent, "complete_phase", workflow_id=wid, phase="implement", result={})
        assert done["phases_completed"] == ["implement"]
        # A key revoked while the process runs stops working at once, reads included.
        assert keys.revoke(agent_key.split("_")[1])
        revoked = await refused(agent, "get_session", session_id=sid)
        assert (revoked["code"], revoked["status"]) == ("unauthenticated", 401)
        assert (await call(ops, "get_session", session_id=sid))["status"] == "succeeded"
