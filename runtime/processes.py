"""Entry points of the split processes: engine, projector, gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chorus.contracts.tracing import tracer_of
from chorus.engine.adapters.liveness import LivenessConfig
from chorus.engine.domain.authz import DEFAULT_ROLES, CachedRoles, Roles
from chorus.engine.service import EngineConfig, EngineService
from chorus.gateway.keys import KeyStore
from chorus.projections.agents import AgentsProjection
from chorus.projections.mcp import McpServersProjection
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import Projection, ProjectionRunner, run_together
from chorus.projections.sessions import SessionsProjection
from chorus.projections.tasks import AgentTasksProjection
from chorus.projections.workflows import WorkflowsProjection
from chorus.settings import Settings
from chorus.store.recorder import open_recorder
from chorus.telemetry import serve_metrics, setup_tracing
from chorus.typesfile import load_workflow_types

log = logging.getLogger("chorus")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _require_nats(settings: Settings) -> str:
    if not settings.nats_url:
        raise SystemExit("CHORUS_NATS_URL (or --nats-url) is required in split mode")
    return settings.nats_url


def engine_config(settings: Settings) -> EngineConfig:
    s = settings.resolved()
    assert s.database_url is not None
    return EngineConfig(
        nats_url=_require_nats(s),
        database_url=s.database_url,
        batch_max=s.batch_max,
        batch_window=s.batch_window_ms / 1000,
        cache_size=s.cache_size,
        replicas=s.stream_replicas,
        workflow_types=load_workflow_types(s.workflow_types),
        roles=key_store_roles(Path(str(s.keys_path))),
        liveness_config=LivenessConfig(s.heartbeat_interval, s.missed_heartbeats),
        seal_anchor_path=s.seal_anchor_path,
        audit_key_path=s.audit_key_path,
        session_quota=s.session_quota,
    )


class KeyStoreRoles:
    """The engine's ``Roles`` port over the key store: the roles of an actor's active keys.

    An actor that never held a key counts as an agent (``DEFAULT_ROLES``: the secured bus
    admits only key holders); one whose keys were all revoked holds no role at all."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def roles_of(self, actor: str) -> frozenset[str]:
        roles = self.store.roles_of(actor)
        return DEFAULT_ROLES if roles is None else roles


def key_store_roles(keys_path: Path, ttl: float = 5.0) -> Roles:
    """Roles read from the key store, cached for ``ttl`` seconds (so a revoked key stops
    counting within that time)."""
    return CachedRoles(KeyStoreRoles(KeyStore(keys_path)), ttl=ttl)


def run_engine(settings: Settings) -> None:
    serve_metrics(settings.metrics_port, settings.host)

    async def main() -> int:
        config = engine_config(settings)
        config.tracer_provider = setup_tracing("chorus-engine")
        service = EngineService(config)
        await service.start()
        signalled = asyncio.create_task(_until_signalled())
        failed = asyncio.create_task(service.wait_failed())
        try:
            await asyncio.wait({signalled, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signalled.cancel()
            failed.cancel()
            await service.stop()
        if failed.done() and not failed.cancelled():
            # A dead worker, relay or timer must not hide in a live process: exit, so the
            # supervisor (chorus up, compose, systemd) restarts us.
            task = failed.result()
            log.error("engine task %s ended: %r; exiting", task.get_name(), task.exception())
            return 1
        return 0

    if code := asyncio.run(main()):
        raise SystemExit(code)


PROJECTIONS: dict[str, Callable[[], Projection]] = {
    "sessions": SessionsProjection,
    "workflows": WorkflowsProjection,
    "agents": AgentsProjection,
    "agent_tasks": AgentTasksProjection,
    "mcp": McpServersProjection,
}


def projection_runners(
    settings: Settings,
    read_store_url: str | None = None,
    names: list[str] | None = None,
    tracer_provider: Any = None,
) -> list[ProjectionRunner]:
    """One runner per read model, all on one read store."""
    s = settings.resolved()
    assert s.database_url is not None
    assert s.read_store_url is not None
    unknown = set(names or []) - set(PROJECTIONS)
    if unknown:
        raise SystemExit(
            f"unknown projection {', '.join(sorted(unknown))}; known: {', '.join(PROJECTIONS)}"
        )
    recorder = open_recorder(s.database_url)
    store = ReadStore(read_store_url or s.read_store_url)
    tracer = tracer_of(tracer_provider, "chorus.projections")
    return [
        ProjectionRunner(recorder, store, PROJECTIONS[name](), tracer=tracer)
        for name in (names or list(PROJECTIONS))
    ]


def run_projector(settings: Settings) -> None:
    serve_metrics(settings.metrics_port, settings.host)

    async def main() -> None:
        runners = projection_runners(settings, tracer_provider=setup_tracing("chorus-projector"))
        tasks = [asyncio.create_task(run_together(runners))]
        try:
            await _until_signalled()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(main())


def run_gateway(settings: Settings) -> None:
    import uvicorn
    from chorus.gateway.app import create_app
    from chorus.gateway.server import server_options
    from chorus.gateway.state import GatewayConfig
    from chorus.schema import asyncapi

    s = settings.resolved()
    app = create_app(
        GatewayConfig(
            nats_url=_require_nats(s),
            database_url=str(s.database_url),
            read_store_url=str(s.read_store_url),
            keys_path=str(s.keys_path),
            max_body_bytes=s.max_body_bytes,
            workflow_types=load_workflow_types(s.workflow_types),
            edge=s.edge(),
            asyncapi=asyncapi(),
            tracer_provider=setup_tracing("chorus-gateway"),
        )
    )
    uvicorn.run(
        app,
        host=s.host,
        port=s.port,
        log_level=s.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through ours (JSON lines)
        access_log=False,
        ws_ping_interval=20,
        timeout_graceful_shutdown=5,
        server_header=False,  # no banner naming the server and its version
        **server_options(s.request_read_timeout, s.max_connections),
    )
