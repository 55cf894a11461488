"""``chorus schema``: JSON Schema and an AsyncAPI 3 document of the bus contracts.

Built from the same msgspec Structs the engine decodes with, so the published schema
cannot drift from what is enforced.

The AsyncAPI document is FastStream's: ``contract_broker`` declares every endpoint of the
bus on a ``NatsBroker`` as an agent sees it (commands and tool calls it publishes; its
inbox, health checks, replies, events and dead letters it subscribes to), with subjects
from ``chorus.contracts.subjects`` and payload types from the contracts, and FastStream's
``AsyncAPI`` writes channels, operations, messages and bindings from it. Two things it does
not do are finished here: FastStream derives payload schemas through pydantic, which cannot
read msgspec Structs, so each declared type carries only its schema's name (``_named``) and
the schemas under those names are msgspec's (the ones the engine enforces); and FastStream
0.7 writes neither channel parameters nor operation replies, which AsyncAPI 3 needs for
subjects with variable tokens and for request/reply.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
from chorus.contracts.agents import AGENT_COMMANDS, ENGINE_ONLY, Heartbeat
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.feed import EventRecord
from chorus.contracts.mcp import MCP_COMMANDS, CallTool, ToolCallReply
from chorus.contracts.sessions import SESSION_COMMANDS
from chorus.contracts.subjects import (
    AGENT_PING,
    DEAD_LETTER,
    DLQ_STREAM,
    EVENT,
    EVENTS_STREAM,
    REPLY_INBOX,
    TASK_INBOX,
    TOOL_AGGREGATE,
    TOOL_QUEUE,
    command_template,
)
from chorus.contracts.tasks import TASK_COMMANDS, TaskMessage
from chorus.contracts.workflow_types import DefineWorkflowType
from chorus.contracts.workflows import WORKFLOW_COMMANDS
from chorus.events.codec import EVENT_TYPES
from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import Field, PlainValidator, WithJsonSchema

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


#: What each variable token of a subject names (the channels' AsyncAPI parameters).
PARAMETERS = {
    "actor_id": "The acting agent or service; NATS permissions pin each user to its own",
    "agent_id": "The agent the messages are for",
    "aggregate": "session, workflow, agent, ...",
    "aggregate_id": "The aggregate instance",
    "event_type": "The event's type, e.g. SessionOpened",
    "reason": "Why the message was dead-lettered",
}
#: NATS's default address: where a client looks first (``chorus up`` prints the real one).
DEFAULT_SERVERS = ("nats://localhost:4222",)
_PARAMETER = re.compile(r"\{([a-z_]+)\}")


def _schema_name(cls: Any) -> str | None:
    """The name msgspec gives ``cls``'s schema (None for a union, which has no name)."""
    (schema,), _ = msgspec.json.schema_components([cls])
    ref = schema.get("$ref")
    return str(ref.rsplit("/", 1)[-1]) if ref else None


def _named(cls: Any, name: str) -> Any:
    """``cls`` as FastStream should declare it: validated by msgspec, documented by name.

    pydantic (FastStream's schema generator) cannot read a Struct, so the schema it sees
    is a placeholder titled ``name``; ``asyncapi`` replaces it with msgspec's schema.
    """

    def convert(value: Any) -> Any:
        return msgspec.convert(value, cls)

    return Annotated[
        cls, PlainValidator(convert), WithJsonSchema({"title": name}), Field(title=name)
    ]


def _receives(broker: NatsBroker, subject: str, title: str, description: str, payload: Any) -> None:
    """Declare a subscriber (an agent receives ``payload`` on ``subject``)."""

    async def receive(message: Any) -> None:
        """Documentation only: this broker is never started."""

    receive.__annotations__ = {"message": payload, "return": None}
    broker.subscriber(subject, title=title, description=description)(receive)


def contract_broker(
    servers: Sequence[str] = DEFAULT_SERVERS,
) -> tuple[NatsBroker, dict[str, Any]]:
    """The bus as an agent sees it, declared on a FastStream broker that never connects;
    and the contract type behind each schema name it uses."""
    broker = NatsBroker(specification_url=list(servers), log_level=logging.DEBUG)
    types: dict[str, Any] = {}

    def named(cls: Any, alias: str | None = None) -> Any:
        name = _schema_name(cls) or alias
        assert name is not None, f"name the union {cls}"
        types[name] = cls
        return _named(cls, name)

    for command, cls in PUBLIC_COMMANDS.items():
        aggregate, name = command.split(".")
        summary = (cls.__doc__ or command).strip().split("\n\n")[0].replace("\n", " ")
        broker.publisher(
            command_template(aggregate, name),
            title=command.replace(".", "_"),
            description=f"{summary} A NATS request: the engine answers with a Reply.",
            schema=named(Envelope[cls]),  # type: ignore[valid-type]
        )
    broker.publisher(
        command_template(TOOL_AGGREGATE, "call"),
        title="tool_call",
        description=(
            "Call a tool of a registered MCP server as the actor. Answered by a gateway "
            f"(queue group {TOOL_QUEUE}), never by the engine: arguments checked against the "
            "tool's recorded schema, access and rate limit, the server's timeout, the call "
            "recorded as ToolCalled (its version is what completion evidence cites). An "
            "agent may publish it on its own actor only. Not deduplicated: each request runs."
        ),
        schema=named(Envelope[CallTool]),
    )
    _receives(broker, REPLY_INBOX, "reply", "The answer to a command request, on the "
              "requester's own inbox", named(Reply))  # fmt: skip
    _receives(broker, REPLY_INBOX, "tool_call_reply", "The answer to a tool call, on the "
              "requester's own inbox", named(ToolCallReply))  # fmt: skip
    _receives(broker, TASK_INBOX, "task_inbox", (
        "An agent's inbox (core NATS, a plain subscription): its tasks, `kind` phase or "
        "session, re-sent until acknowledged with task.accept or by the work itself "
        "(start_phase, report_progress, complete_phase, submit_result), all open ones "
        "again when it comes back online; `kind` cancel when the work is cancelled, "
        "moved (lease lost) or closed without it. At least once: dedupe by "
        "(task_id, attempt)."
    ), named(TaskMessage, "TaskMessage"))  # fmt: skip
    _receives(broker, AGENT_PING, "agent_ping", "Health check: an agent answers this "
              "request with any reply (the gateway's trigger_health_check)", bytes)  # fmt: skip
    _receives(broker, EVENT, "events", f"JetStream stream {EVENTS_STREAM}; Nats-Msg-Id is "
              "<aggregate_id>:<version>", named(EventRecord))  # fmt: skip
    _receives(broker, DEAD_LETTER, "dead_letters", f"JetStream stream {DLQ_STREAM}: rejected "
              "raw messages with Chorus-Reason / Chorus-Error / Chorus-Subject headers", bytes)  # fmt: skip
    return broker, types


def _asyncapi_schemas(schema: Any) -> Any:
    """msgspec writes OpenAPI's discriminator object; an AsyncAPI schema names the
    property alone (the tag values are the variants' ``const``s)."""
    if isinstance(schema, list):
        return [_asyncapi_schemas(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _asyncapi_schemas(value) for key, value in schema.items()}
    if isinstance(out.get("discriminator"), dict):
        out["discriminator"] = out["discriminator"]["propertyName"]
    return out


def asyncapi(servers: Sequence[str] = DEFAULT_SERVERS) -> dict[str, Any]:
    """The AsyncAPI 3 document of the bus (served by the gateway at ``/asyncapi.json``)."""
    broker, declared = contract_broker(servers)
    spec = AsyncAPI(broker, title="Chorus bus", version="1", description=(
        "Commands are NATS requests on chorus.cmd.<actor_id>.<aggregate>.<command>, answered "
        "with a Reply; events, tasks and health checks flow the other way."
    )).to_specification()  # fmt: skip
    document: dict[str, Any] = json.loads(spec.to_json())
    # The payload schemas: msgspec's, under the names the declarations gave them, beside
    # every other contract (event data included), as ``json_schemas`` exports them.
    types = {**contract_types(), **declared}
    names = list(types)
    tops, schemas = msgspec.json.schema_components(
        [types[n] for n in names], ref_template="#/components/schemas/{name}"
    )
    for name, top in zip(names, tops, strict=True):
        if name in declared and top.get("$ref") != f"#/components/schemas/{name}":
            schemas[name] = top
    schemas = _asyncapi_schemas(schemas)
    placeholders = document["components"]["schemas"]
    document["components"]["schemas"] = {
        **{n: s for n, s in placeholders.items() if n not in declared},
        **schemas,
    }
    for channel in document["channels"].values():
        tokens = _PARAMETER.findall(channel["address"])
        if tokens:
            channel["parameters"] = {t: {"description": PARAMETERS[t]} for t in tokens}
    # Request/reply: each command's answer arrives on the requester's reply inbox.
    for key, operation in document["operations"].items():
        if operation["action"] == "send":
            answer = "tool_call_reply" if key == "tool_call" else "reply"
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{answer}"},
                "messages": [{"$ref": f"#/channels/{answer}/messages/SubscribeMessage"}],
            }
    # The broker keeps its publishers in a set: sorted, the document reads the same each time.
    for section in (document, document["components"]):
        for key in ("channels", "operations", "messages", "schemas"):
            if key in section:
                section[key] = dict(sorted(section[key].items()))
    return document


def write_schema(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in (("contracts.schema.json", json_schemas()), ("asyncapi.json", asyncapi())):
        path = out / name
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
