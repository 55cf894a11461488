"""Real MCP servers for the tests, written with the SDK: ``python tests/mcp_servers.py
KIND stdio`` or ``... KIND http PORT``.

``calc`` has ``add`` (appends each call to the file named by ``CALL_LOG``), ``hang`` (never
answers) and ``secret`` (whether ``TOOL_TOKEN`` reached it); ``bad`` lists a tool whose
input schema is not valid JSON Schema.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import mcp.types as types
from mcp.server import MCPServer, Server, ServerRequestContext
from mcp.server.stdio import stdio_server


def calc() -> MCPServer:
    server = MCPServer("calc")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        log = os.environ.get("CALL_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{a}+{b}\n")
        return a + b

    @server.tool()
    async def hang() -> str:
        """Never answers."""
        await anyio.sleep(3600)
        return "late"

    @server.tool()
    def secret() -> bool:
        """Whether the secret reached this process."""
        return os.environ.get("TOOL_TOKEN") == "s3cret"

    return server


def bad() -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(
            name="broken", input_schema={"type": "object", "properties": {"x": {"type": "nope"}}},
        )])  # fmt: skip

    return Server("bad", on_list_tools=list_tools)


async def serve_lowlevel_stdio(server: Server[Any]) -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    kind, transport = sys.argv[1], sys.argv[2]
    if kind == "calc":
        server = calc()
        if transport == "stdio":
            server.run("stdio")
        else:
            server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[3]))
        return
    anyio.run(serve_lowlevel_stdio, bad())


if __name__ == "__main__":
    main()
