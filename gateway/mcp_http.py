"""Streamable HTTP for the MCP server, mounted at ``/mcp`` on the gateway.

Stateless and JSON-only: every POST carries its own ``Authorization: Bearer <api key>``,
checked by the gateway's middleware like any other route, so no MCP session can outlive a
revoked key or be carried over to another caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from chorus.gateway.errors import Problem
from chorus.gateway.keys import Principal
from chorus.gateway.mcp_server import ServicesOf, build_server
from litestar import Litestar, asgi
from litestar.handlers.asgi_handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send
from mcp.server import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

PATH = "/mcp"


def principal_of_request(ctx: ServerRequestContext[Any, Any]) -> Principal:
    """The principal the gateway's middleware put on the HTTP request that carried the call."""
    request = ctx.request
    user = request.scope.get("user") if request is not None else None
    if not isinstance(user, Principal):
        raise Problem(401, "unauthenticated", "send Authorization: Bearer <api key>")
    return user


class McpHttp:
    """The MCP endpoint and the lifespan its session manager needs (one per app)."""

    def __init__(self, services_of: ServicesOf) -> None:
        self.manager = StreamableHTTPSessionManager(
            app=build_server(principal_of_request, services_of),
            json_response=True,
            stateless=True,
        )

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    def route(self) -> ASGIRouteHandler:
        manager = self.manager

        @asgi(PATH, is_mount=True, copy_scope=True, tags=["mcp"],
              summary="Model Context Protocol (streamable HTTP, stateless, JSON responses)")  # fmt: skip
        async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            await manager.handle_request(scope, receive, send)  # type: ignore[arg-type]

        return mcp_endpoint
