"""``chorus mcp``: Chorus as an MCP server on stdin/stdout, for a local LLM agent.

The process acts as the actor of one API key (``CHORUS_API_KEY``), checked against the key
store at start, exactly as the gateway checks it; it speaks to a running Chorus (NATS, the
event store and the read models) like a gateway does. Logs go to stderr: stdout is the
protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from mcp.server.stdio import stdio_server

from contracts.workflow_types import WorkflowTypeRegistry
from gateway.keys import KeyStore, Principal
from gateway.mcp_server import build_server
from gateway.state import GatewayConfig, Services, connect_services
from runtime.settings import Settings

API_KEY_ENV = "CHORUS_API_KEY"


def authenticate(settings: Settings, key: str | None) -> Principal:
    """The principal of ``key``, or exit with the reason (an MCP client shows stderr)."""
    if not key:
        raise SystemExit(f"chorus mcp: set {API_KEY_ENV} to your API key (chorus keys create)")
    principal = KeyStore(Path(str(settings.keys_path))).authenticate(key)
    if principal is None:
        raise SystemExit("chorus mcp: the API key is unknown or revoked")
    return principal


async def serve(settings: Settings, principal: Principal) -> None:
    s = settings.resolved()
    if not s.nats_url:
        raise SystemExit(
            "chorus mcp: CHORUS_NATS_URL (or --nats-url) of a running Chorus is required"
        )
    config = GatewayConfig(
        nats_url=s.nats_url,
        database_url=str(s.database_url),
        read_store_url=str(s.read_store_url),
        keys_path=str(s.keys_path),
        workflow_types_path=str(s.workflow_types) if s.workflow_types else None,
    )
    types = WorkflowTypeRegistry.load(s.workflow_types)
    async with connect_services(config, types, Path(str(s.audit_key_path))) as services:
        box: dict[str, Services] = {"services": services}
        server = build_server(lambda _ctx: principal, lambda: box["services"])
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def run_mcp(settings: Settings) -> int:
    principal = authenticate(settings.resolved(), os.environ.get(API_KEY_ENV))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, principal))
    print(f"chorus mcp: {principal.actor} disconnected", file=sys.stderr)
    return 0
