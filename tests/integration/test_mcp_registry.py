"""The registry of MCP servers and validated, recorded tool calls, against real MCP servers
(tests/mcp_servers.py, written with the SDK) over stdio and HTTP, a real gateway, engine,
projector and nats-server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from chorus.bootstrap import EngineService
from chorus.contracts.agents import result_hash
from chorus.contracts.mcp import digest
from chorus.projections.runner import ProjectionRunner

from tests.conftest import Gateway, free_port
from tests.integration.test_mcp_server import call, mcp_client, refused

SERVERS = str(Path(__file__).parent.parent / "mcp_servers.py")
BASE = "/api/v1/mcp-servers"


def stdio(kind: str = "calc", **env: str) -> dict[str, Any]:
    return {"type": "stdio", "command": [sys.executable, SERVERS, kind, "stdio"], "env": env}


async def server_when(
    http: httpx.AsyncClient, name: str, headers: dict[str, str],
    ready: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:  # fmt: skip
    """The server's view once it is ``ready``: call and health records go through the
    engine and the projector after the call or check has answered."""
    for _ in range(400):
        server: dict[str, Any] = (await http.get(f"{BASE}/{name}", headers=headers)).json()
        if ready(server):
            break
        await asyncio.sleep(0.05)
    return server


async def recorded_calls(
    http: httpx.AsyncClient, name: str, headers: dict[str, str], count: int
) -> dict[str, Any]:
    """The server's view once ``count`` call records reached the read model."""
    return await server_when(http, name, headers, lambda server: server["calls"] >= count)


@pytest.fixture
def http_calc(tmp_path: Path) -> Iterator[str]:
    """The calc server on streamable HTTP, as its own process."""
    port = free_port()
    log = (tmp_path / "calc.log").open("w")
    process = subprocess.Popen(
        [sys.executable, SERVERS, "calc", "http", str(port)], stdout=subprocess.DEVNULL, stderr=log
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the HTTP MCP server did not start") from None
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


async def test_a_stdio_server_is_registered_with_its_tools_and_calls_are_checked_and_recorded(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("CHORUS_TEST_TOOL_TOKEN", "s3cret")
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("CALL_LOG", str(calls))
    ops = gateway.key("ops", "operator")
    agent = gateway.key("agent-1")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        registered = await http.post(BASE, headers=ops, json={
            "name": "calc", "transport": stdio(TOOL_TOKEN="CHORUS_TEST_TOOL_TOKEN",
                                               CALL_LOG="CALL_LOG"),
            "access": {"roles": ["operator"], "agents": ["agent-2"]},
        })  # fmt: skip
        assert registered.status_code == 201, registered.text
        server = registered.json()
        assert {t["name"] for t in server["tools"]} == {"add", "hang", "secret"}
        for tool in server["tools"]:
            assert tool["schema_digest"] == digest(tool["input_schema"])
        assert server["transport"]["env"] == {"TOOL_TOKEN": "CHORUS_TEST_TOOL_TOKEN",
                                              "CALL_LOG": "CALL_LOG"}  # fmt: skip
        listed = (await http.get("/api/v1/tools", headers=agent)).json()
        assert {(t["server"], t["name"]) for t in listed} >= {("calc", "add")}

        url = f"{BASE}/calc/tools/add/call"
        bad = await http.post(url, headers=ops, json={"arguments": {"a": "two"}})
        assert bad.status_code == 400
        assert bad.json()["code"] == "invalid_arguments"
        assert {f["field"] for f in bad.json()["details"]["fields"]} == {"a", "b"}
        assert not calls.exists()  # the bad call never reached the server

        good = await http.post(url, headers=ops, json={"arguments": {"a": 2, "b": 3},
                                                      "task_id": "task-1"})  # fmt: skip
        assert good.status_code == 200, good.text
        body = good.json()
        assert body["outcome"] == "ok"
        assert body["result"]["structuredContent"] == {"result": 5}
        assert body["result_digest"] == digest(body["result"])
        assert body["args_digest"] == digest({"a": 2, "b": 3})
        assert calls.read_text() == "2+3\n"

        secret = await http.post(f"{BASE}/calc/tools/secret/call", headers=ops, json={})
        assert secret.json()["result"]["structuredContent"] == {"result": True}

        denied = await http.post(url, headers=agent, json={"arguments": {"a": 1, "b": 1}})
        assert denied.status_code == 403
        assert denied.json()["code"] == "not_authorized"
        unknown = await http.post(f"{BASE}/calc/tools/nope/call", headers=ops, json={})
        assert unknown.json()["code"] == "tool_not_found"

        async with mcp_client(gateway, "agent-2") as allowed:  # named in access.agents
            over_mcp = await call(allowed, "call_registered_tool", server="calc", tool="add",
                                  arguments={"a": 1, "b": 1})  # fmt: skip
            assert over_mcp["result"]["structuredContent"] == {"result": 2}
            wrong = await refused(allowed, "call_registered_tool", server="calc", tool="add",
                                  arguments={"a": 1})  # fmt: skip
            assert (wrong["code"], wrong["details"]["fields"][0]["field"]) == (
                "invalid_arguments",
                "b",
            )

        health = (await http.get(f"{BASE}/calc/health", headers=agent)).json()
        assert health["status"] == "healthy", health
        assert health["tools"] == 3
        after = await server_when(http, "calc", ops, lambda s: s["health"] is not None)
        assert (after["calls"], after["failed_calls"], after["health"]) == (3, 0, "healthy")
        again = (await http.get(f"{BASE}/calc/health", headers=agent)).json()
        assert again["status"] == "healthy"  # unchanged: not recorded again

        auditor = gateway.key("auditor-1", "auditor")
        log = (await http.get("/api/v1/events", headers=auditor, params={"limit": 1000})).json()
    events = [e for e in log["items"] if e["aggregate"] == "mcp_server"]
    assert [e["type"] for e in events] == ["McpServerRegistered", "ToolsDiscovered",
                                           "ToolCalled", "ToolCalled", "ToolCalled",
                                           "McpServerHealthChanged"]  # fmt: skip
    called = events[2]["data"]
    assert called["caller"] == "ops"
    assert called["task_id"] == "task-1"
    assert called["result_digest"] == body["result_digest"]
    assert called["arguments"] is None  # not kept unless the configuration says so
    assert "s3cret" not in str(log)


async def test_a_bad_schema_is_refused_with_its_reason(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        refused = await http.post(BASE, headers=ops, json={"name": "bad",
                                                          "transport": stdio("bad")})  # fmt: skip
        assert refused.status_code == 400
        problem = refused.json()
        assert problem["code"] == "invalid_tool_schema"
        assert problem["details"]["problems"][0]["tool"] == "broken"
        assert "not valid JSON Schema" in problem["detail"]
        assert (await http.get(f"{BASE}/bad", headers=ops)).status_code == 404
        agent = gateway.key("agent-1")
        forbidden = await http.post(BASE, headers=agent, json={"name": "calc",
                                                              "transport": stdio()})  # fmt: skip
        assert forbidden.status_code == 403


async def test_a_retried_registration_is_answered_as_a_replay(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    ops = {**gateway.key("ops", "operator"), "Idempotency-Key": "register-calc-1"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        body = {"name": "calc", "transport": stdio()}
        first = await http.post(BASE, headers=ops, json=body)
        again = await http.post(BASE, headers=ops, json=body)
    assert first.status_code == again.status_code == 201, again.text
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["version"] == first.json()["version"]


async def test_a_hanging_http_server_times_out_cleanly_and_others_go_on(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway, http_calc: str
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        registered = await http.post(BASE, headers=ops, json={
            "name": "remote", "transport": {"type": "http", "url": http_calc},
            "config": {"timeout_seconds": 5, "store_arguments": True, "store_results": True,
                       "calls_per_minute": 2},
        })  # fmt: skip
        assert registered.status_code == 201, registered.text
        hung = await http.post(f"{BASE}/remote/tools/hang/call", headers=ops, json={})
        assert hung.status_code == 504
        assert hung.json()["code"] == "tool_timeout"
        good = await http.post(f"{BASE}/remote/tools/add/call", headers=ops,
                               json={"arguments": {"a": 40, "b": 2}})  # fmt: skip
        assert good.json()["result"]["structuredContent"] == {"result": 42}
        limited = await http.post(f"{BASE}/remote/tools/add/call", headers=ops,
                                  json={"arguments": {"a": 1, "b": 1}})  # fmt: skip
        assert (limited.status_code, limited.json()["code"]) == (429, "rate_limited")
        server = await recorded_calls(http, "remote", ops, 2)
        assert (server["calls"], server["failed_calls"]) == (2, 1)
        rediscovered = await http.post(f"{BASE}/remote/discover", headers=ops)
        assert rediscovered.json()["version"] == server["version"]  # unchanged: nothing new
        removed = await http.delete(f"{BASE}/remote", headers=ops)
        assert removed.status_code == 204
        assert (await http.get(f"{BASE}/remote", headers=ops)).status_code == 404


async def test_a_hanging_stdio_server_times_out_and_the_engine_goes_on(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        registered = await http.post(BASE, headers=ops, json={
            "name": "local", "transport": stdio()})  # fmt: skip
        assert registered.status_code == 201, registered.text
        configured = await http.patch(f"{BASE}/local", headers=ops,
                                      json={"config": {"timeout_seconds": 3}})  # fmt: skip
        assert configured.json()["config"]["timeout_seconds"] == 3
        hung = await http.post(f"{BASE}/local/tools/hang/call", headers=ops, json={})
        assert (hung.status_code, hung.json()["code"]) == (504, "tool_timeout")
        # The timeout was recorded through the engine like any command, and it takes more.
        server = await recorded_calls(http, "local", ops, 1)
        assert (server["calls"], server["failed_calls"]) == (1, 1)
        opened = await http.post("/api/v1/sessions", headers=ops, json={
            "participants": ["agent-1"], "task": {"description": "still here"}})  # fmt: skip
        assert opened.status_code == 201


async def test_an_agent_backs_its_claim_with_its_own_tool_call_and_cannot_cite_anothers(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        registered = await http.post(BASE, headers=ops, json={
            "name": "calc", "transport": stdio(), "access": {"agents": ["agent-1", "agent-2"]}})  # fmt: skip
        assert registered.status_code == 201, registered.text
    async with (
        mcp_client(gateway, "ops", "operator") as operator,
        mcp_client(gateway, "agent-1") as agent,
        mcp_client(gateway, "agent-2") as thief,
    ):
        sids = {}
        for name, client in (("agent-1", agent), ("agent-2", thief)):
            await call(client, "register_agent", name=name)
            sids[name] = (await call(operator, "open_session", participants=[name],
                                     task={"description": "add"}))["session_id"]  # fmt: skip
        done = await call(agent, "call_registered_tool", server="calc", tool="add",
                          arguments={"a": 1, "b": 2}, task_id=sids["agent-1"])  # fmt: skip
        cited = {"server": "calc", "version": done["recorded_version"],
                 "result_digest": done["result_digest"]}  # fmt: skip
        for name, client in (("agent-1", agent), ("agent-2", thief)):
            await call(client, "submit_result", session_id=sids[name], result={"sum": 3})

        def claim(name: str) -> dict[str, Any]:
            return {"agent_id": name, "task_id": sids[name], "output_hash": result_hash({"sum": 3}),
                    "completion_time": datetime.now(UTC).isoformat(), "tool_calls": [cited]}  # fmt: skip

        stolen = await call(thief, "verify_completion", **claim("agent-2"))
        assert stolen["verdict"] == "rejected"
        assert {r["code"] for r in stolen["reasons"]} == {"tool_call_not_yours",
                                                          "tool_call_other_task"}  # fmt: skip
        own = await call(agent, "verify_completion", **claim("agent-1"))
        assert own["verdict"] == "verified", own
