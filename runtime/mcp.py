"""``chorus mcp``: Chorus as an MCP server on stdin/stdout, for a local LLM agent.

The process acts as the actor of one API key (``--key`` or ``CHORUS_API_KEY``), checked
against the key store at start and again on every request, exactly as the gateway checks
it (a revoked key stops working at once). On the bus it is that
actor too: the key is its NATS credential (user: the key's id, password: the key) and its
replies come on the actor's own inbox (``_INBOX_<actor>``), so a secured bus lets it do
what the key's holder may do and nothing more. It speaks to a running Chorus (NATS, the
event store and the read models) like a gateway does. Logs go to stderr: stdout is the
protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chorus import busauth
from chorus.agent_sdk import bus_url
from chorus.bootstrap import bootstrap
from chorus.contracts.subjects import agent_inbox_prefix
from chorus.gateway.edge import EdgeConfig
from chorus.gateway.errors import Problem
from chorus.gateway.keys import KeyStore, Principal
from chorus.gateway.mcp_server import build_server
from chorus.gateway.state import Services
from chorus.settings import Settings
from mcp.server.stdio import stdio_server

API_KEY_ENV = "CHORUS_API_KEY"


def authenticate(settings: Settings, key: str | None) -> Principal:
    """The principal of ``key``, or exit with the reason (an MCP client shows stderr)."""
    if not key:
        raise SystemExit(
            f"chorus mcp: give your API key with --key or {API_KEY_ENV} (chorus keys create)"
        )
    principal = KeyStore(Path(str(settings.keys_path))).authenticate(key)
    if principal is None:
        raise SystemExit("chorus mcp: the API key is unknown or revoked")
    return principal


def still_valid(keys: KeyStore, key: str) -> Principal:
    """The key's principal, checked again on every request: a key revoked while the process
    runs stops working at once, reads included (its bus connection is cut by the reload)."""
    principal = keys.authenticate(key)
    if principal is None:
        raise Problem(401, "unauthenticated", "the API key is unknown or revoked")
    return principal


def bus_connection(settings: Settings, key: str, actor: str) -> tuple[str, dict[str, Any]]:
    """Where and how to connect as ``actor``: the configured NATS URL, else the one
    ``chorus up`` runs for the data directory; the key is the credential unless the URL
    already carries one (a deployment that hands out its own bus credentials)."""
    url = settings.nats_url or busauth.running_url(settings.data_dir / "nats")
    if not url:
        raise SystemExit(
            "chorus mcp: no NATS to connect to: set CHORUS_NATS_URL (or --nats-url), or run "
            "it where chorus up runs (--data-dir)"
        )
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        url = bus_url(url, key)
    options = {"name": f"chorus-mcp-{actor}", "inbox_prefix": agent_inbox_prefix(actor)}
    return url, options


async def serve(settings: Settings, principal: Principal, key: str) -> None:
    s = settings.resolved()
    url, options = bus_connection(s, key, principal.actor)
    components = bootstrap(s)
    # Services only: no HTTP edge, no documents to serve.
    config = components.gateway_config(nats_url=url, edge=EdgeConfig(), asyncapi=None)
    async with components.gateway_services(config, **options) as services:
        box: dict[str, Services] = {"services": services}
        keys = KeyStore(Path(str(s.keys_path)))
        server = build_server(
            lambda _ctx: still_valid(keys, key), lambda: box["services"], tools_over_bus=True
        )
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def run_mcp(settings: Settings, key: str | None = None) -> int:
    key = key or os.environ.get(API_KEY_ENV)
    principal = authenticate(settings.resolved(), key)
    assert key is not None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, principal, key))
    print(f"chorus mcp: {principal.actor} disconnected", file=sys.stderr)
    return 0
