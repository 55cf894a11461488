"""The McpServer aggregate: a registered MCP server, its tool catalogue and its call record.

Keyed by ``server_uuid(name)``. Operators and admins register, configure and remove
servers; the catalogue is checked again here (valid schemas, unique names, matching
digests) so nothing unchecked is ever recorded. Tool calls run in the gateway, outside the
command path, and are recorded afterwards by the gateway's own identity only
(``chorus.contracts.mcp.RECORDER``), naming the tool's schema digest as it stands on record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import msgspec
from chorus.contracts import errors as codes
from chorus.contracts.mcp import (
    RECORDER,
    Access,
    ConfigureMcpServer,
    RecordHealth,
    RecordToolCall,
    RecordToolsDiscovered,
    RegisterMcpServer,
    RemoveMcpServer,
    ServerConfig,
    ToolSpec,
    catalogue_problems,
    digest,
)
from chorus.engine.domain import errors
from chorus.engine.domain.context import EngineContext
from chorus.events.codec import GENESIS_HASH
from chorus.events.mcp import (
    McpServerConfigured,
    McpServerHealthChanged,
    McpServerRegistered,
    McpServerRemoved,
    ToolCalled,
    ToolsDiscovered,
)

AGGREGATE = "mcp_server"


class McpServerNotFound(errors.DomainError):
    code = codes.MCP_SERVER_NOT_FOUND


class McpServerExists(errors.DomainError):
    code = codes.MCP_SERVER_EXISTS


class InvalidToolSchema(errors.DomainError):
    code = codes.INVALID_TOOL_SCHEMA


class ToolNotFound(errors.DomainError):
    code = codes.TOOL_NOT_FOUND


@dataclass(frozen=True)
class CallOnRecord:
    """What completion evidence checks of a call made for a task (``ToolCalled``)."""

    tool: str
    caller: str
    task_id: str
    outcome: str
    result_digest: str | None


@dataclass
class McpServerState:
    id: UUID
    version: int = 0
    last_hash: str = GENESIS_HASH
    name: str = ""
    owner: str = ""
    removed: bool = False
    access: Access = field(default_factory=Access)
    config: ServerConfig = field(default_factory=ServerConfig)
    #: tool name -> schema digest, as last discovered
    tools: dict[str, str] = field(default_factory=dict)
    catalogue_digest: str = ""
    calls: int = 0
    #: Event version -> the call, for calls made for a task (the ones evidence may cite).
    task_calls: dict[int, CallOnRecord] = field(default_factory=dict)
    #: healthy | unhealthy as last recorded ("" before the first check)
    health: str = ""

    @property
    def exists(self) -> bool:
        return self.version > 0 and not self.removed

    def apply(self, event: msgspec.Struct) -> None:
        match event:
            case McpServerRegistered():
                self.name = event.name
                self.owner = event.owner
                self.access = event.access
                self.config = event.config
                self.removed = False
                self.tools = {}
                self.catalogue_digest = ""
                self.health = ""
            case McpServerConfigured():
                self.owner = event.owner or self.owner
                self.access = event.access or self.access
                self.config = event.config or self.config
            case McpServerRemoved():
                self.removed = True
            case ToolsDiscovered():
                self.tools = {t.name: t.schema_digest for t in event.tools}
                self.catalogue_digest = event.catalogue_digest
            case ToolCalled():
                self.calls += 1
                if event.task_id is not None:
                    self.task_calls[self.version + 1] = CallOnRecord(
                        tool=event.tool, caller=event.caller, task_id=event.task_id,
                        outcome=event.outcome, result_digest=event.result_digest,
                    )  # fmt: skip
            case McpServerHealthChanged():
                self.health = event.status
            case _:
                raise TypeError(f"not an MCP server event: {type(event).__name__}")
        self.version += 1

    # Named checks -------------------------------------------------------------------------

    def check_exists(self, name: str) -> None:
        if not self.exists:
            raise McpServerNotFound(f"MCP server {name!r} is not registered")


def check_operator(actor: str, ctx: EngineContext | None, what: str) -> None:
    if ctx is None or not ctx.is_operator(actor):
        raise errors.NotAuthorized(f"{actor} may not {what}: operators and admins only")


def check_catalogue(tools: list[ToolSpec]) -> None:
    problems = catalogue_problems(tools)
    if problems:
        raise InvalidToolSchema(
            f"the catalogue cannot be recorded: {problems[0]['tool']}: {problems[0]['message']}",
            {"problems": problems},
        )


def catalogue_digest(tools: list[ToolSpec]) -> str:
    return digest(sorted([t.name, t.schema_digest] for t in tools))


def _discovered(tools: list[ToolSpec], actor: str) -> ToolsDiscovered:
    ordered = sorted(tools, key=lambda t: t.name)
    return ToolsDiscovered(tools=ordered, catalogue_digest=catalogue_digest(ordered),
                           discovered_by=actor)  # fmt: skip


def decide_register(
    state: McpServerState, cmd: RegisterMcpServer, actor: str, now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:  # fmt: skip
    check_operator(actor, ctx, "register MCP servers")
    if state.exists:
        raise McpServerExists(f"MCP server {cmd.name!r} is already registered")
    check_catalogue(cmd.tools)
    return [
        McpServerRegistered(
            name=cmd.name, transport=cmd.transport, owner=cmd.owner or actor, access=cmd.access,
            config=cmd.config, registered_by=actor, registered_at=now,
        ),
        _discovered(cmd.tools, actor),
    ]  # fmt: skip


def decide_configure(
    state: McpServerState, cmd: ConfigureMcpServer, actor: str, now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:  # fmt: skip
    state.check_exists(cmd.name)
    check_operator(actor, ctx, "configure MCP servers")
    if cmd.transport is None and cmd.owner is None and cmd.access is None and cmd.config is None:
        raise errors.InvalidCommand("give at least one of transport, owner, access, config")
    return [McpServerConfigured(transport=cmd.transport, owner=cmd.owner, access=cmd.access,
                                config=cmd.config, configured_by=actor)]  # fmt: skip


def decide_remove(
    state: McpServerState, cmd: RemoveMcpServer, actor: str, now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:  # fmt: skip
    state.check_exists(cmd.name)
    check_operator(actor, ctx, "remove MCP servers")
    return [McpServerRemoved(reason=cmd.reason, removed_by=actor)]


def decide_record_tools(
    state: McpServerState, cmd: RecordToolsDiscovered, actor: str, now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:  # fmt: skip
    """Nothing is recorded when the catalogue is unchanged (a discovery is also a check)."""
    state.check_exists(cmd.name)
    check_operator(actor, ctx, "record a tool catalogue")
    check_catalogue(cmd.tools)
    event = _discovered(cmd.tools, actor)
    return [] if event.catalogue_digest == state.catalogue_digest else [event]


def check_recorder(actor: str, what: str) -> None:
    if actor != RECORDER:
        raise errors.NotAuthorized(f"only {RECORDER} records {what}; {actor} may not")


def decide_record_health(
    state: McpServerState, cmd: RecordHealth, actor: str, now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:  # fmt: skip
    """Only a change of status is recorded (a check that finds what the last one found
    adds nothing to the log)."""
    check_recorder(actor, "health checks")
    state.check_exists(cmd.name)
    if cmd.status == state.health:
        return []
    return [McpServerHealthChanged(status=cmd.status, error=cmd.error, checked_by=actor)]


def decide_record_call(
    state: McpServerState, cmd: RecordToolCall, actor: str, now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:  # fmt: skip
    check_recorder(actor, "tool calls")
    state.check_exists(cmd.name)
    known = state.tools.get(cmd.tool)
    if known is None:
        raise ToolNotFound(f"MCP server {cmd.name!r} has no tool {cmd.tool!r}")
    if known != cmd.schema_digest:
        raise errors.InvalidCommand(
            "schema_digest is not the tool's recorded schema; discover the server again",
            {"field": "payload.schema_digest", "recorded": known},
        )
    return [
        ToolCalled(
            tool=cmd.tool, caller=cmd.caller, schema_digest=cmd.schema_digest,
            args_digest=cmd.args_digest, result_digest=cmd.result_digest,
            duration_ms=cmd.duration_ms, outcome=cmd.outcome, error=cmd.error,
            task_id=cmd.task_id,
            arguments=cmd.arguments if state.config.store_arguments else None,
            result=cmd.result if state.config.store_results else None,
        )
    ]  # fmt: skip
