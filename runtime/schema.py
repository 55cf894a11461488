"""``chorus schema``: JSON Schema and an AsyncAPI 3 document of the bus contracts.

Built from the same msgspec Structs the engine decodes with, so the published schema
cannot drift from what is enforced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from chorus.contracts.agents import AGENT_COMMANDS, ENGINE_ONLY, Heartbeat
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.feed import EventRecord
from chorus.contracts.mcp import MCP_COMMANDS, CallTool, ToolCallReply
from chorus.contracts.sessions import SESSION_COMMANDS
from chorus.contracts.tasks import TASK_COMMANDS, TaskMessage
from chorus.contracts.workflow_types import DefineWorkflowType
from chorus.contracts.workflows import WORKFLOW_COMMANDS
from chorus.events.codec import EVENT_TYPES

#: "<aggregate>.<command>" -> payload, for every command a client may send.
_BY_AGGREGATE: tuple[tuple[str, Mapping[str, type[msgspec.Struct]]], ...] = (
    ("session", SESSION_COMMANDS),
    ("workflow", WORKFLOW_COMMANDS),
    ("agent", {**AGENT_COMMANDS, "heartbeat": Heartbeat}),
    ("workflow_type", {"define": DefineWorkflowType}),
    ("task", TASK_COMMANDS),
    ("mcp_server", MCP_COMMANDS),
)
PUBLIC_COMMANDS: dict[str, type[msgspec.Struct]] = {
    f"{aggregate}.{name}": cls
    for aggregate, commands in _BY_AGGREGATE
    for name, cls in commands.items()
    if (aggregate, name) not in ENGINE_ONLY
}


def _ref_template(name: str) -> str:
    return "#/components/schemas/{name}".replace("{name}", name)


def contract_types() -> dict[str, Any]:
    types: dict[str, Any] = {
        name: Envelope[cls]  # type: ignore[valid-type]
        for name, cls in PUBLIC_COMMANDS.items()
    }
    types["tool.call"] = Envelope[CallTool]
    types["Reply"] = Reply
    types["ToolCallReply"] = ToolCallReply
    types["EventRecord"] = EventRecord
    types["TaskMessage"] = TaskMessage
    for aggregate, events in EVENT_TYPES.items():
        if aggregate != "command":
            for name, cls in events.items():
                types[f"event.{aggregate}.{name}"] = cls
    return types


def json_schemas() -> dict[str, Any]:
    types = contract_types()
    names = list(types)
    schemas, components = msgspec.json.schema_components(
        [types[n] for n in names], ref_template="#/$defs/{name}"
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Chorus bus contracts",
        "$defs": components,
        "contracts": dict(zip(names, schemas, strict=True)),
    }


def asyncapi() -> dict[str, Any]:
    types = contract_types()
    names = list(types)
    schemas, components = msgspec.json.schema_components(
        [types[n] for n in names], ref_template="#/components/schemas/{name}"
    )
    by_name = dict(zip(names, schemas, strict=True))
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for command in PUBLIC_COMMANDS:
        key = command.replace(".", "_")
        messages[key] = {"name": key, "payload": by_name[command]}
        channels[key] = {
            "address": "chorus.cmd.{actor_id}." + command,
            "parameters": {
                "actor_id": {"description": "The acting agent; NATS permissions pin it"}
            },
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        operations[key] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"{command} (NATS request; answered with a Reply)",
            "reply": {"messages": [{"$ref": "#/components/messages/reply"}]},
        }
    messages["reply"] = {"name": "reply", "payload": by_name["Reply"]}
    messages["tool_call"] = {"name": "tool_call", "payload": by_name["tool.call"]}
    messages["tool_call_reply"] = {"name": "tool_call_reply", "payload": by_name["ToolCallReply"]}
    channels["tool_call"] = {
        "address": "chorus.cmd.{actor_id}.tool.call",
        "description": (
            "Call a tool of a registered MCP server as the actor. Answered by a gateway "
            "(queue group chorus-tools), never by the engine: arguments checked against the "
            "tool's recorded schema, access and rate limit, the server's timeout, the call "
            "recorded as ToolCalled (its version is what completion evidence cites). An "
            "agent may publish it on its own actor only. Not deduplicated: each request runs."
        ),
        "parameters": {"actor_id": {"description": "The caller; NATS permissions pin it"}},
        "messages": {"tool_call": {"$ref": "#/components/messages/tool_call"}},
    }
    operations["tool_call"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/tool_call"},
        "summary": "tool.call (NATS request; answered with a ToolCallReply)",
        "reply": {"messages": [{"$ref": "#/components/messages/tool_call_reply"}]},
    }
    messages["event"] = {"name": "event", "payload": by_name["EventRecord"]}
    channels["events"] = {
        "address": "chorus.evt.{aggregate}.{aggregate_id}.{event_type}",
        "description": "JetStream stream EVENTS; Nats-Msg-Id is <aggregate_id>:<version>",
        "parameters": {"aggregate": {}, "aggregate_id": {}, "event_type": {}},
        "messages": {"event": {"$ref": "#/components/messages/event"}},
    }
    operations["events"] = {"action": "receive", "channel": {"$ref": "#/channels/events"}}
    channels["agent_ping"] = {
        "address": "chorus.agent.{agent_id}.ping",
        "description": "Health check: an agent answers this request with any reply",
        "parameters": {"agent_id": {}},
    }
    operations["agent_ping"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/agent_ping"},
        "summary": "agents subscribe and reply (the gateway's trigger_health_check)",
    }
    messages["task"] = {"name": "task", "payload": by_name["TaskMessage"]}
    channels["task_inbox"] = {
        "address": "chorus.task.{agent_id}",
        "description": (
            "An agent's inbox (core NATS, a plain subscription): its tasks, `kind` phase or "
            "session, re-sent until acknowledged with task.accept or by the work itself "
            "(start_phase, report_progress, complete_phase, submit_result), all open ones "
            "again when it comes back online; `kind` cancel when the work is cancelled, "
            "moved (lease lost) or closed without it. At least once: dedupe by "
            "(task_id, attempt)."
        ),
        "parameters": {"agent_id": {"description": "The agent the task is assigned to"}},
        "messages": {"task": {"$ref": "#/components/messages/task"}},
    }
    operations["task_inbox"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/task_inbox"},
        "summary": "agents subscribe to their own inbox and acknowledge with task.accept",
    }
    channels["dead_letters"] = {
        "address": "chorus.dlq.{reason}",
        "description": "Rejected raw messages with Chorus-Reason / Chorus-Error / Chorus-Subject headers",
        "parameters": {"reason": {}},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Chorus bus", "version": "1"},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components, "messages": messages},
    }


def write_schema(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in (("contracts.schema.json", json_schemas()), ("asyncapi.json", asyncapi())):
        path = out / name
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
