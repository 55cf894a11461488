"""What the gateway's handlers share: the bus, the read store, history. Built in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from chorus.contracts import errors as codes
from chorus.contracts.servers import servers
from chorus.contracts.tracing import tracer_of
from chorus.contracts.workflow_types import WorkflowTypeRegistry
from chorus.gateway.bus import CommandBus
from chorus.gateway.edge import EdgeConfig
from chorus.gateway.errors import Problem
from chorus.gateway.fanout import FeedHub
from chorus.projections.audit import AuditLog
from chorus.projections.history import History
from chorus.projections.readstore import ReadStore
from litestar.di import NamedDependency
from nats.aio.client import Client as NATS
from opentelemetry.trace import TracerProvider


@dataclass
class GatewayConfig:
    nats_url: str
    database_url: str
    read_store_url: str
    keys_path: str
    max_body_bytes: int = 1024 * 1024
    command_timeout: float = 10.0
    read_your_writes_timeout: float = 2.0
    #: Built-in workflow types plus the operator's file (the composition root reads it).
    workflow_types: WorkflowTypeRegistry = field(default_factory=WorkflowTypeRegistry)
    #: ``/ready`` reports the relay stalled when an event recorded this long ago is still
    #: not on the EVENTS stream (the live feeds are then stopped).
    relay_stall_seconds: float = 30.0
    #: Key that signs audit bundles; default ``<dir of keys_path>/audit/signing.key``.
    audit_key_path: str | None = None
    #: The HTTP edge: tokens, limits, CORS, hosts (see gateway/jwt_tokens.py, ratelimit.py,
    #: headers.py).
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    #: The bus's AsyncAPI document, served at ``/asyncapi.json`` (built by the runtime).
    asyncapi: dict[str, Any] | None = None
    #: Traces HTTP requests and the commands they send (off when None).
    tracer_provider: TracerProvider | None = None


@dataclass
class Services:
    config: GatewayConfig
    nc: NATS
    bus: CommandBus
    reads: ReadStore
    history: History
    audit: AuditLog
    workflow_types: WorkflowTypeRegistry
    #: Live feeds' shared upstream subscriptions (``chorus.gateway.fanout``).
    feeds: FeedHub

    async def read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a read-store query off the event loop."""
        return await asyncio.to_thread(lambda: fn(self.reads.connection(), *args, **kwargs))

    async def wait_for_projection(
        self, name: str, position: int, timeout: float | None = None
    ) -> bool:
        """Read-your-writes: wait (bounded) until projection ``name`` has seen ``position``."""
        if position <= 0:
            return True
        limit = self.config.read_your_writes_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.002
        while self.reads.position(name) < position:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    async def read_your_write(self, name: str, position: int, **details: Any) -> None:
        """Wait for the read model as ``wait_for_projection``; if it does not catch up, answer
        503 ``read_model_behind`` (the command is recorded; ``details`` say what to read)."""
        if not await self.wait_for_projection(name, position):
            raise Problem(
                503, codes.READ_MODEL_BEHIND,
                "the change is recorded but the read model has not shown it yet "
                "(is the projector running?); read again shortly",
                details={**details, "position": position}, headers={"Retry-After": "1"},
            )  # fmt: skip

    async def read_history(self, aggregate: str, aggregate_id: str, **kwargs: Any) -> Any:
        return await asyncio.to_thread(
            self.history.aggregate_events, aggregate, aggregate_id, **kwargs
        )


#: How handlers ask for the services (an explicit named dependency).
ServicesDep = NamedDependency[Services]


@asynccontextmanager
async def connect_services(
    config: GatewayConfig, audit_key_path: Path, **nats_options: Any
) -> AsyncIterator[Services]:
    """Connect what the handlers share; used by the HTTP app and by ``chorus mcp`` (stdio),
    so both speak to the engine and read models the same way. ``nats_options`` go to
    ``nats.connect`` (``chorus mcp`` connects as its caller: name and reply inbox)."""
    # A comma-separated list names the nodes of a NATS cluster (any one lets us in); the
    # credentials go to every node, those the cluster announces too (contracts.servers).
    urls, credentials = servers(config.nats_url)
    options: dict[str, Any] = {"name": "chorus-gateway", "max_reconnect_attempts": -1,
                               "reconnect_time_wait": 0.5, **credentials, **nats_options}  # fmt: skip
    nc = await nats.connect(urls, **options)
    history = History(config.database_url)
    feeds = FeedHub(nc, history.head)
    try:
        yield Services(
            config=config,
            nc=nc,
            bus=CommandBus(
                nc,
                timeout=config.command_timeout,
                tracer=tracer_of(config.tracer_provider, "chorus.gateway"),
            ),
            reads=ReadStore(config.read_store_url, readonly=True),
            history=history,
            audit=AuditLog(history.recorder, audit_key_path),
            workflow_types=config.workflow_types,
            feeds=feeds,
        )
    finally:
        with contextlib.suppress(Exception):
            await feeds.close()
        try:
            async with asyncio.timeout(3):
                await nc.drain()
        except Exception:  # shutting down either way; never hang here
            with contextlib.suppress(Exception):
                await nc.close()
