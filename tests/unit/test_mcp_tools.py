"""The MCP tools take exactly the payloads the bus takes: one schema source, one decoder."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from chorus.contracts.agents import AGENT_COMMANDS
from chorus.contracts.sessions import SESSION_COMMANDS
from chorus.contracts.tasks import TASK_COMMANDS
from chorus.contracts.workflows import WORKFLOW_COMMANDS
from chorus.gateway.errors import Problem
from chorus.gateway.keys import KeyStore
from chorus.gateway.mcp_tools import TOOLS
from chorus.mcp import authenticate
from chorus.settings import Settings

BUS_PAYLOADS = {
    *SESSION_COMMANDS.values(), *WORKFLOW_COMMANDS.values(), *AGENT_COMMANDS.values(),
    *TASK_COMMANDS.values(),
}  # fmt: skip


def test_every_command_tool_schema_is_the_bus_contract_schema() -> None:
    commands = [t for t in TOOLS.values() if t.payload in BUS_PAYLOADS]
    assert {t.name for t in commands} >= {"open_session", "submit_result", "complete_phase",
                                          "register_agent", "verify_completion", "accept_task"}  # fmt: skip
    for tool in commands:
        contract = msgspec.json.schema(tool.payload)
        own = contract["$defs"][tool.payload.__name__]
        assert tool.schema["type"] == "object"
        assert tool.schema["properties"] == own["properties"], tool.name
        assert set(tool.schema["required"]) == set(own.get("required", [])) - set(tool.generated)


def test_a_generated_id_may_be_left_out_and_bad_arguments_are_invalid_commands() -> None:
    opened = TOOLS["open_session"].decode({"participants": ["a"], "task": {"description": "d"}})
    assert len(opened.session_id) == 36
    with pytest.raises(Problem) as caught:
        TOOLS["submit_result"].decode({"session_id": "nope", "result": {}})
    assert caught.value.code == "invalid_command"
    assert caught.value.status_code == 400
    with pytest.raises(Problem):
        TOOLS["report_progress"].decode({"workflow_id": opened.session_id, "phase": "p",
                                         "progress": 101})  # fmt: skip


def test_chorus_mcp_starts_only_with_a_valid_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path).resolved()
    with pytest.raises(SystemExit, match="CHORUS_API_KEY"):
        authenticate(settings, None)
    with pytest.raises(SystemExit, match="unknown or revoked"):
        authenticate(settings, "chk_nope_nope")
    key = KeyStore(tmp_path / "keys.db").create("agent-1", "agent")
    assert authenticate(settings, key).actor == "agent-1"


def test_the_asyncapi_document_publishes_tool_calls_with_their_reply() -> None:
    from chorus.schema import asyncapi, json_schemas

    spec = asyncapi()
    assert spec["channels"]["tool_call"]["address"] == "chorus.cmd.{actor_id}.tool.call"
    assert spec["operations"]["tool_call"]["reply"] == {
        "channel": {"$ref": "#/channels/tool_call_reply"},
        "messages": [{"$ref": "#/channels/tool_call_reply/messages/SubscribeMessage"}],
    }
    reply = spec["components"]["messages"]["tool_call_reply:SubscribeMessage"]
    assert reply["payload"] == {"$ref": "#/components/schemas/ToolCallReply"}
    assert {"tool.call", "ToolCallReply"} <= set(json_schemas()["contracts"])


def test_a_gateway_bounds_how_many_tool_calls_one_actor_runs_at_once() -> None:
    from chorus.gateway.mcp_bus import InFlight

    bound = InFlight(per_actor=2)
    assert bound.admit("agent-1") and bound.admit("agent-1")
    assert not bound.admit("agent-1")  # a third waits for one to end
    assert bound.admit("agent-2")  # others are not held up
    bound.release("agent-1")
    assert bound.admit("agent-1")
