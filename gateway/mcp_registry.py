"""The registry of MCP servers over HTTP: register (with discovery), configure, remove,
discover again, health, the tool catalogue, and validated, recorded tool calls."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
from chorus.contracts import errors as codes
from chorus.contracts.agents import TaskId
from chorus.contracts.mcp import (
    RECORDER,
    Access,
    ConfigureMcpServer,
    HttpTransport,
    RecordHealth,
    RecordToolCall,
    RecordToolsDiscovered,
    RegisterMcpServer,
    RemoveMcpServer,
    ServerConfig,
    ServerName,
    StdioTransport,
    ToolCallOutcome,
    Transport,
    argument_problems,
    catalogue_problems,
    digest,
)
from chorus.contracts.sessions import Id
from chorus.gateway import mcp_client
from chorus.gateway.auth import can_read, can_write, require_roles
from chorus.gateway.bus import issue_command, replayed
from chorus.gateway.errors import Problem
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services, ServicesDep
from chorus.projections import mcp as read_model
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import Struct

can_manage = require_roles("operator", "admin")


class RegisterBody(Struct, kw_only=True, forbid_unknown_fields=True):
    """``transport`` is ``{"type": "stdio", "command": [...], "env": {VAR: ENV_VAR}}`` or
    ``{"type": "http", "url": "...", "headers": {Header: ENV_VAR}}``: secrets by the name of
    the environment variable that holds them, never by value."""

    name: ServerName
    transport: Transport
    owner: Id | None = None
    #: Default: operators and admins may call the tools.
    access: Access | None = None
    config: ServerConfig = ServerConfig()


class ConfigureBody(Struct, kw_only=True, forbid_unknown_fields=True):
    transport: Transport | None = None
    owner: Id | None = None
    access: Access | None = None
    config: ServerConfig | None = None


class CallBody(Struct, kw_only=True, forbid_unknown_fields=True):
    arguments: dict[str, Any] = {}
    task_id: TaskId | None = None


class Health(Struct, kw_only=True):
    name: str
    status: str
    latency_ms: float | None = None
    tools: int | None = None
    error: str | None = None


def _transport(value: dict[str, Any]) -> Transport:
    return msgspec.convert(value, StdioTransport | HttpTransport)


async def _server(services: Services, name: str) -> read_model.McpServerView:
    view = await services.read(read_model.get_server, name)
    if view is None:
        raise Problem(404, codes.MCP_SERVER_NOT_FOUND, f"MCP server {name!r} is not registered")
    return view  # type: ignore[no-any-return]


async def _discover_checked(transport: Transport, timeout: float) -> list[Any]:
    tools = await mcp_client.discover(transport, timeout)
    problems = catalogue_problems(tools)
    if problems:
        raise Problem(
            400, codes.INVALID_TOOL_SCHEMA,
            f"the server's catalogue cannot be recorded: {problems[0]['tool']}: "
            f"{problems[0]['message']}", details={"problems": problems},
        )  # fmt: skip
    return tools


class McpServerController(Controller):
    path = "/api/v1/mcp-servers"
    tags = ["mcp"]
    #: Every route here is for readers at least; writes and audits narrow it further.
    guards = [can_read]

    @post("/", guards=[can_manage], status_code=201,
          summary="Register an MCP server: discover and validate its tools, record them")  # fmt: skip
    async def register(
        self, request: Request[Principal, Any, Any], data: JSONBody[RegisterBody],
        services: ServicesDep,
    ) -> Response[read_model.McpServerView]:  # fmt: skip
        tools = await _discover_checked(data.transport, data.config.timeout_seconds)
        reply = await issue_command(
            services, request, "mcp_server", "register",
            RegisterMcpServer(name=data.name, transport=data.transport, tools=tools,
                              owner=data.owner, access=data.access or Access(), config=data.config),
            read_model=read_model.NAME, mcp_server=data.name,
        )  # fmt: skip
        view = await _server(services, data.name)
        return Response(view, status_code=201,
                        headers={"Location": f"{self.path}/{data.name}", **replayed(reply)})  # fmt: skip

    @get("/", summary="Registered MCP servers and their tools")
    async def list_servers(self, services: ServicesDep) -> list[read_model.McpServerView]:
        return await services.read(read_model.list_servers)  # type: ignore[no-any-return]

    @get("/{name:str}", summary="An MCP server and its tools")
    async def get_server(
        self, name: FromPath[str], services: ServicesDep
    ) -> read_model.McpServerView:
        return await _server(services, name)

    @patch("/{name:str}", guards=[can_manage], summary="Change an MCP server's configuration")
    async def configure(
        self, request: Request[Principal, Any, Any], name: FromPath[str],
        data: JSONBody[ConfigureBody], services: ServicesDep,
    ) -> read_model.McpServerView:  # fmt: skip
        await _server(services, name)
        await issue_command(
            services, request, "mcp_server", "configure",
            ConfigureMcpServer(name=name, transport=data.transport, owner=data.owner,
                               access=data.access, config=data.config),
            read_model=read_model.NAME, mcp_server=name,
        )  # fmt: skip
        return await _server(services, name)

    @delete("/{name:str}", guards=[can_manage], status_code=204, summary="Remove an MCP server")
    async def remove(
        self, request: Request[Principal, Any, Any], name: FromPath[str], services: ServicesDep,
        reason: FromQuery[str] = "removed",
    ) -> None:  # fmt: skip
        await _server(services, name)
        reply = await issue_command(
            services, request, "mcp_server", "remove", RemoveMcpServer(name=name, reason=reason),
        )  # fmt: skip
        await services.wait_for_projection(read_model.NAME, reply.position)

    @post("/{name:str}/discover", guards=[can_manage], status_code=200,
          summary="Discover the server's tools again; a changed catalogue is recorded")  # fmt: skip
    async def discover(
        self, request: Request[Principal, Any, Any], name: FromPath[str], services: ServicesDep
    ) -> read_model.McpServerView:
        view = await _server(services, name)
        tools = await _discover_checked(
            _transport(view.transport), view.config.get("timeout_seconds", 30.0)
        )
        await issue_command(
            services, request, "mcp_server", "record_tools",
            RecordToolsDiscovered(name=name, tools=tools), read_model=read_model.NAME, mcp_server=name,
        )  # fmt: skip
        return await _server(services, name)

    @get("/{name:str}/health", summary="Connect, ping and list tools now")
    async def health(self, name: FromPath[str], services: ServicesDep) -> Health:
        view = await _server(services, name)
        found = await mcp_client.health(
            _transport(view.transport), view.config.get("timeout_seconds", 30.0)
        )
        # Recorded when the status changed (the engine keeps transitions only), so the read
        # model and the history show each server's health.
        await services.bus.send(RECORDER, "mcp_server", "record_health",
                                RecordHealth(name=name, status=found["status"],
                                             error=found.get("error")))  # fmt: skip
        return Health(name=name, **found)

    @post("/{name:str}/tools/{tool:str}/call", guards=[can_write], status_code=200,
          summary="Call a tool: arguments checked against its recorded schema, call recorded")  # fmt: skip
    async def call_tool(
        self, request: Request[Principal, Any, Any], name: FromPath[str], tool: FromPath[str],
        data: JSONBody[CallBody], services: ServicesDep,
    ) -> ToolCallOutcome:  # fmt: skip
        return await run_tool_call(request.user, services, name, tool, data)


class CallLimiter:
    """Calls per caller and server in the last minute, in this gateway process (each gateway
    counts its own: with N gateways a caller gets at most N times the limit)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._calls: dict[tuple[str, str], deque[float]] = {}

    def admit(self, actor: str, server: str, per_minute: int | None) -> None:
        if per_minute is None:
            return
        now = self.clock()
        window = self._calls.setdefault((actor, server), deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= per_minute:
            retry = max(1, int(window[0] + 60 - now) + 1)
            raise Problem(429, codes.RATE_LIMITED,
                          f"{actor} may call the tools of {server!r} {per_minute} times a minute",
                          headers={"Retry-After": str(retry)},
                          details={"retry_after": retry})  # fmt: skip
        window.append(now)


#: One per gateway process: limits are about what this process lets through.
LIMITER = CallLimiter()

#: Arguments or a result larger than this are recorded by digest only, even when the
#: configuration keeps them: the record must fit one bus message.
MAX_KEPT_BYTES = 64 * 1024


def _kept(value: Any, keep: bool) -> Any:
    if not keep or value is None or len(msgspec.json.encode(value)) > MAX_KEPT_BYTES:
        return None
    return value


async def run_tool_call(
    principal: Principal, services: Services, name: str, tool: str, data: CallBody
) -> ToolCallOutcome:
    """Check who calls and what, run the call outside the engine with the server's timeout,
    then record it (as ``RECORDER``) whatever the outcome."""
    view = await _server(services, name)
    spec = next((t for t in view.tools if t.name == tool), None)
    if spec is None:
        raise Problem(404, codes.TOOL_NOT_FOUND, f"MCP server {name!r} has no tool {tool!r}")
    access = Access(**view.access)
    if not access.allows(principal.actor, principal.role):
        raise Problem(403, codes.NOT_AUTHORIZED,
                      f"{principal.actor} may not call the tools of {name!r}")  # fmt: skip
    config = ServerConfig(**view.config)
    LIMITER.admit(principal.actor, name, config.calls_per_minute)
    problems = argument_problems(spec.input_schema, data.arguments)
    if problems:
        raise Problem(
            400, codes.INVALID_ARGUMENTS,
            f"{len(problems)} argument(s) do not match the schema of {tool}: "
            + "; ".join(f"{p['field']}: {p['message']}" for p in problems),
            details={"fields": problems},
        )  # fmt: skip
    done = await mcp_client.call(_transport(view.transport), tool, data.arguments,
                                 config.timeout_seconds)  # fmt: skip
    record = RecordToolCall(
        name=name, tool=tool, caller=principal.actor, schema_digest=spec.schema_digest,
        args_digest=digest(data.arguments),
        result_digest=digest(done.result) if done.result is not None else None,
        duration_ms=done.duration_ms, outcome=done.outcome,  # type: ignore[arg-type]
        error=done.error, task_id=data.task_id,
        arguments=_kept(data.arguments, config.store_arguments),
        result=_kept(done.result, config.store_results),
    )  # fmt: skip
    reply = await services.bus.send(RECORDER, "mcp_server", "record_call", record)
    outcome = ToolCallOutcome(
        server=name, tool=tool, outcome=done.outcome, result=done.result, error=done.error,
        duration_ms=done.duration_ms, schema_digest=record.schema_digest,
        args_digest=record.args_digest, result_digest=record.result_digest,
        recorded_version=reply.version, position=reply.position,
    )  # fmt: skip
    if done.outcome == "timeout":
        raise Problem(504, codes.TOOL_TIMEOUT, f"{name}/{tool}: {done.error}",
                      details={"position": reply.position})  # fmt: skip
    if done.outcome == "unavailable":
        raise Problem(502, codes.MCP_SERVER_UNAVAILABLE, f"{name}/{tool}: {done.error}",
                      details={"position": reply.position})  # fmt: skip
    return outcome


@get("/api/v1/tools", guards=[can_read], tags=["mcp"],
     summary="Every tool of every registered MCP server")  # fmt: skip
async def list_tools(
    services: ServicesDep, server: FromQuery[str | None] = None
) -> list[read_model.ToolView]:
    return await services.read(read_model.list_tools, server)  # type: ignore[no-any-return]
