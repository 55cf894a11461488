"""Chorus as an MCP server: the tools of ``chorus.gateway.mcp_tools`` and read-only resources for
session, workflow and agent views, over stdio (``chorus mcp``) or streamable HTTP at
``/mcp`` on the gateway.

The caller is always a ``Principal`` from a credential: over HTTP the API key of each
request (authenticated by the gateway's own middleware), over stdio the key the process was
started with. A tool's failure is an MCP tool error whose text is the same problem the HTTP
API would answer: ``{"code", "message", "status", "details"}`` with a stable code.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import mcp.types as types
from chorus.contracts import errors as codes
from chorus.contracts.subjects import is_token
from chorus.gateway.agents import _agent, _with_last_heartbeat
from chorus.gateway.auth import READERS
from chorus.gateway.errors import Problem
from chorus.gateway.keys import Principal
from chorus.gateway.mcp_tools import TOOLS, Caller, Tool, session_view, to_builtins
from chorus.gateway.state import Services
from chorus.gateway.workflows import workflow_status
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError

log = logging.getLogger(__name__)

#: How a request finds its caller: the credential's principal, or a Problem (401).
PrincipalOf = Callable[[ServerRequestContext[Any, Any]], Principal]
ServicesOf = Callable[[], Services]

RESOURCES: tuple[tuple[str, str, str], ...] = (
    ("session", "chorus://sessions/{session_id}", "A coordination session's current state"),
    ("workflow", "chorus://workflows/{workflow_id}", "A workflow's status and progress"),
    ("agent", "chorus://agents/{agent_id}", "An agent, its status and reliability"),
)
#: JSON-RPC error code for a resource that cannot be read (the problem is in ``data``).
RESOURCE_ERROR = -32002
_RESOURCE_RE = re.compile(r"^chorus://(sessions|workflows|agents)/([^/]+)$")


def problem_of(error: Exception) -> dict[str, Any]:
    """The problem body of an error, as the HTTP API renders it (minus the request parts)."""
    if isinstance(error, Problem):
        body: dict[str, Any] = {"code": error.code, "message": error.detail,
                                "status": error.status_code}  # fmt: skip
        if error.details:
            body["details"] = error.details
        return body
    log.exception("MCP tool failed", exc_info=error)
    return {"code": codes.INTERNAL_ERROR, "message": "the tool failed; see the server log",
            "status": 500}  # fmt: skip


def _text(value: Any) -> str:
    return json.dumps(value, default=str)


def _refuse_role(tool_name: str, principal: Principal, allowed: frozenset[str]) -> Problem:
    return Problem(
        403, "forbidden",
        f"role {principal.role} may not call {tool_name} (allowed: {', '.join(sorted(allowed))})",
    )  # fmt: skip


async def call_tool(tool: Tool, caller: Caller, arguments: dict[str, Any] | None) -> Any:
    """Check the role, decode the arguments as the bus would, run the tool."""
    if caller.principal.role not in tool.roles:
        raise _refuse_role(tool.name, caller.principal, tool.roles)
    return to_builtins(await tool.run(caller, tool.decode(arguments)))


async def read_view(uri: str, caller: Caller) -> Any:
    """The view a resource URI names (readers only)."""
    if caller.principal.role not in READERS:
        raise _refuse_role("resources/read", caller.principal, READERS)
    match = _RESOURCE_RE.match(uri)
    if match is None:
        raise Problem(404, "not_found", f"no resource {uri}")
    kind, ident = match.groups()
    if kind == "agents":
        if not is_token(ident):
            raise Problem(404, codes.AGENT_NOT_FOUND, f"agent {ident} is not registered")
        return to_builtins(await _with_last_heartbeat(caller.services,
                                                      await _agent(caller.services, ident)))  # fmt: skip
    try:
        parsed = uuid.UUID(ident)
    except ValueError:
        raise Problem(404, "not_found", f"no resource {uri}") from None
    if kind == "sessions":
        return to_builtins(await session_view(caller, str(parsed)))
    return to_builtins(await workflow_status(parsed, caller.services))


def build_server(
    principal_of: PrincipalOf, services_of: ServicesOf, *, tools_over_bus: bool = False
) -> Server[Any]:
    """The MCP server; ``principal_of`` and ``services_of`` tie it to a transport.
    ``tools_over_bus``: registered tools are called through a gateway (``chorus mcp``)."""

    def caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
        return Caller(principal=principal_of(ctx), services=services_of(),
                      tools_over_bus=tools_over_bus)  # fmt: skip

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name=t.name,
                    description=t.description,
                    input_schema=t.schema,
                    annotations=types.ToolAnnotations(read_only_hint=t.read_only),
                )
                for t in TOOLS.values()
            ]
        )

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = TOOLS.get(params.name)
        try:
            if tool is None:
                raise Problem(400, codes.UNKNOWN_COMMAND, f"no tool {params.name!r}")
            result = await call_tool(tool, caller(ctx), params.arguments)
        except Exception as error:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=_text(problem_of(error)))],
                is_error=True,
            )
        structured = result if isinstance(result, dict) else {"result": result}
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=_text(result))],
            structured_content=structured,
        )

    async def list_templates(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    name=name, uri_template=template, description=text, mime_type="application/json"
                )
                for name, template, text in RESOURCES
            ]
        )

    async def list_resources(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[])

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        try:
            view = await read_view(uri, caller(ctx))
        except Problem as problem:
            # Resources have no error result: a JSON-RPC error carries the problem.
            body = problem_of(problem)
            raise MCPError(code=RESOURCE_ERROR, message=body["message"], data=body) from None
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(uri=uri, mime_type="application/json", text=_text(view))
            ]
        )

    return Server(
        "chorus",
        version="1",
        instructions="Chorus coordinates fleets of agents: open sessions and submit results, "
        "run workflow phases, register and send heartbeats, and read reliability. Every call "
        "acts as the actor of your API key.",
        on_list_tools=list_tools,
        on_call_tool=on_call_tool,
        on_list_resource_templates=list_templates,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )
