"""``chorus schema``: JSON Schema and an AsyncAPI 3 document of the bus contracts.

Built from the same msgspec Structs the engine decodes with, so the published schema
cannot drift from what is enforced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from contracts.envelope import Envelope, Reply
from contracts.feed import EventRecord
from contracts.sessions import SESSION_COMMANDS
from events.session import SESSION_EVENTS

PUBLIC_COMMANDS = {k: v for k, v in SESSION_COMMANDS.items() if k != "timeout"}


def _ref_template(name: str) -> str:
    return "#/components/schemas/{name}".replace("{name}", name)


def contract_types() -> dict[str, Any]:
    types: dict[str, Any] = {
        f"session.{name}": Envelope[cls] for name, cls in PUBLIC_COMMANDS.items()
    }  # type: ignore[valid-type]
    types["Reply"] = Reply
    types["EventRecord"] = EventRecord
    for name, cls in SESSION_EVENTS.items():
        types[f"event.session.{name}"] = cls
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
        key = f"session_{command}"
        messages[key] = {"name": key, "payload": by_name[f"session.{command}"]}
        channels[key] = {
            "address": "chorus.cmd.{actor_id}.session." + command,
            "parameters": {
                "actor_id": {"description": "The acting agent; NATS permissions pin it"}
            },
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        operations[key] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"session.{command} (NATS request; answered with a Reply)",
            "reply": {"messages": [{"$ref": "#/components/messages/reply"}]},
        }
    messages["reply"] = {"name": "reply", "payload": by_name["Reply"]}
    messages["event"] = {"name": "event", "payload": by_name["EventRecord"]}
    channels["events"] = {
        "address": "chorus.evt.{aggregate}.{aggregate_id}.{event_type}",
        "description": "JetStream stream EVENTS; Nats-Msg-Id is <aggregate_id>:<version>",
        "parameters": {"aggregate": {}, "aggregate_id": {}, "event_type": {}},
        "messages": {"event": {"$ref": "#/components/messages/event"}},
    }
    operations["events"] = {"action": "receive", "channel": {"$ref": "#/channels/events"}}
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
