"""Command payloads for the registry of MCP servers (``chorus.cmd.<actor>.mcp_server.<command>``)
and the rules every party checks the same way: tool schemas, digests, who may call a tool.

A server's secrets are never in a command or an event: its transport names environment
variables (``env`` for a stdio server's process, ``headers`` for an HTTP server), and the
process that connects reads their values from its own environment.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any, Literal

import msgspec
from chorus.contracts.agents import Digest as Digest
from chorus.contracts.agents import ServerName as ServerName
from chorus.contracts.agents import TaskId
from chorus.contracts.errors import ErrorInfo
from chorus.contracts.sessions import Id
from msgspec import Meta, Struct

MCP_NAMESPACE = uuid.UUID("0b1f3f7e-55b8-4d7e-8c3a-6d63705f7372")
ToolName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-.]{1,128}$")]
#: The name of an environment variable holding a secret (its value is never recorded).
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Role = Literal["agent", "operator", "auditor", "admin"]
Outcome = Literal["ok", "error", "timeout", "unavailable"]

#: The actor that records tool calls: the gateway runs the call, then records it under its
#: own service identity, which NATS permissions reserve to it (no agent can forge a record).
RECORDER = "gateway"

_canonical = msgspec.json.Encoder(order="sorted")


def digest(value: Any) -> str:
    """``sha256:`` + hex sha256 of the canonical JSON of ``value`` (sorted keys, compact)."""
    return "sha256:" + hashlib.sha256(_canonical.encode(value)).hexdigest()


def server_uuid(name: str) -> uuid.UUID:
    """The aggregate id of a registered server: derived from its name."""
    return uuid.uuid5(MCP_NAMESPACE, name)


class StdioTransport(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, tag="stdio"):
    """A server Chorus starts as a process: ``command`` (argv), and ``env`` mapping each
    variable the process needs to the variable of Chorus's environment that holds it."""

    command: Annotated[list[Annotated[str, Meta(min_length=1, max_length=4096)]],
                       Meta(min_length=1, max_length=100)]  # fmt: skip
    env: dict[EnvName, EnvName] = {}


class HttpTransport(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, tag="http"):
    """A server reached over streamable HTTP; ``headers`` maps each header to the variable of
    Chorus's environment that holds its value (for example Authorization -> TOOLS_TOKEN)."""

    url: Annotated[str, Meta(pattern=r"^https?://[^\s]{1,2000}$")]
    headers: dict[Annotated[str, Meta(pattern=r"^[A-Za-z0-9\-]{1,100}$")], EnvName] = {}


Transport = StdioTransport | HttpTransport


class Access(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Who may call the server's tools: any key with one of ``roles``, or one of ``agents``."""

    roles: list[Role] = msgspec.field(default_factory=lambda: ["operator", "admin"])
    agents: Annotated[list[Id], Meta(max_length=1000)] = []

    def allows(self, actor: str, role: str) -> bool:
        return role in self.roles or actor in self.agents


class ServerConfig(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How calls run and what their records keep: arguments and results themselves are
    stored only when asked (their digests always are)."""

    timeout_seconds: Annotated[float, Meta(gt=0, le=600)] = 30.0
    #: Calls one caller may make per minute through one gateway (None: no limit).
    calls_per_minute: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    store_arguments: bool = False
    store_results: bool = False


class ToolSpec(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A tool as discovered: its input schema and that schema's digest."""

    name: ToolName
    description: Annotated[str, Meta(max_length=10_000)] = ""
    input_schema: dict[str, Any]
    schema_digest: Digest


class RegisterMcpServer(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Register a server with the catalogue discovered from it (operators and admins)."""

    name: ServerName
    transport: Transport
    tools: Annotated[list[ToolSpec], Meta(max_length=1000)]
    owner: Id | None = None
    access: Access = Access()
    config: ServerConfig = ServerConfig()


class ConfigureMcpServer(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Change what is given; what is left out stays."""

    name: ServerName
    transport: Transport | None = None
    owner: Id | None = None
    access: Access | None = None
    config: ServerConfig | None = None


class RemoveMcpServer(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: ServerName
    reason: Annotated[str, Meta(min_length=1, max_length=2000)] = "removed"


class RecordToolsDiscovered(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The catalogue found by discovering again (recorded only when it changed)."""

    name: ServerName
    tools: Annotated[list[ToolSpec], Meta(max_length=1000)]


class RecordToolCall(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A tool call the gateway ran for ``caller`` (recorded by ``RECORDER`` only)."""

    name: ServerName
    tool: ToolName
    caller: Id
    schema_digest: Digest
    args_digest: Digest
    result_digest: Digest | None = None
    duration_ms: Annotated[float, Meta(ge=0)]
    outcome: Outcome
    error: Annotated[str, Meta(max_length=10_000)] | None = None
    task_id: TaskId | None = None
    arguments: dict[str, Any] | None = None
    result: Any = None


class CallTool(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Call a tool of a registered server (``chorus.cmd.<actor>.tool.call``; answered by the
    gateway, never the engine): ``arguments`` are checked against the tool's recorded input
    schema first; give ``task_id`` when the call is for a task, so completion evidence can
    cite it."""

    server: ServerName
    tool: ToolName
    arguments: dict[str, Any] = {}
    task_id: TaskId | None = None


class ToolCallOutcome(Struct, kw_only=True):
    """What a call returned and how it is recorded: ``result_digest`` is the digest of
    ``result`` (canonical JSON), ``args_digest`` that of the arguments; ``recorded_version``
    is the version of its ``ToolCalled`` event on the server's aggregate (what evidence
    cites), ``position`` its place in the global log."""

    server: str
    tool: str
    outcome: str
    result: dict[str, Any] | None
    error: str | None
    duration_ms: float
    schema_digest: str
    args_digest: str
    result_digest: str | None
    recorded_version: int | None
    position: int


class ToolCallReply(Struct, kw_only=True):
    """The answer to ``tool.call`` on the request's reply subject: ``ok`` with the call's
    outcome, or ``rejected`` with the same stable code the HTTP route gives (a call that
    timed out or whose server failed is recorded first: ``details.position``)."""

    command_id: str
    status: Literal["ok", "rejected"]
    result: ToolCallOutcome | None = None
    error: ErrorInfo | None = None


class RecordHealth(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What a health check found (recorded by ``RECORDER`` when the status changed)."""

    name: ServerName
    status: Literal["healthy", "unhealthy"]
    error: Annotated[str, Meta(max_length=10_000)] | None = None


#: Commands the gateway answers (``chorus.cmd.<actor>.tool.<command>``), not the engine.
TOOL_COMMANDS: dict[str, type[Struct]] = {"call": CallTool}

MCP_COMMANDS: dict[str, type[Struct]] = {
    "register": RegisterMcpServer,
    "configure": ConfigureMcpServer,
    "remove": RemoveMcpServer,
    "record_tools": RecordToolsDiscovered,
    "record_call": RecordToolCall,
    "record_health": RecordHealth,
}


def tool_spec(name: str, description: str | None, input_schema: dict[str, Any]) -> ToolSpec:
    return ToolSpec(name=name, description=description or "", input_schema=input_schema,
                    schema_digest=digest(input_schema))  # fmt: skip


def catalogue_problems(tools: list[ToolSpec]) -> list[dict[str, str]]:
    """Why a catalogue cannot be recorded: a name given twice, a schema that is not a valid
    JSON Schema of an object, a digest that does not match its schema. Empty when fine."""
    # Imported here: jsonschema is slow to import and the engine needs it only for this.
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    problems: list[dict[str, str]] = []
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            problems.append({"tool": tool.name, "message": "tool name is not unique"})
        seen.add(tool.name)
        schema = tool.input_schema
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as error:
            where = "/".join(str(p) for p in error.path) or "$"
            problems.append({"tool": tool.name,
                             "message": f"input schema is not valid JSON Schema at {where}: "
                                        f"{error.message}"})  # fmt: skip
            continue
        if schema.get("type") != "object":
            problems.append(
                {"tool": tool.name, "message": 'input schema must have "type": "object"'}
            )
        if tool.schema_digest != digest(schema):
            problems.append(
                {"tool": tool.name, "message": "schema_digest does not match the schema"}
            )
    return problems


def argument_problems(schema: dict[str, Any], arguments: dict[str, Any]) -> list[dict[str, str]]:
    """Every way ``arguments`` break ``schema``, each with the field's dotted path."""
    from jsonschema.validators import validator_for

    validator = validator_for(schema)(schema)
    problems: dict[tuple[str, str], dict[str, str]] = {}
    for error in validator.iter_errors(arguments):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            # "required" errors sit on the parent object: name the missing fields themselves.
            for name in error.validator_value:
                if name not in error.instance:
                    field = f"{path}.{name}" if path else name
                    problems[field, "required"] = {
                        "field": field,
                        "message": f"missing required field `{name}`",
                    }
            continue
        problems[path or "$", error.message] = {"field": path or "$", "message": error.message}
    return sorted(problems.values(), key=lambda p: p["field"])
