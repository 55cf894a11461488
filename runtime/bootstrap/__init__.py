"""The composition root: ``bootstrap(settings)`` builds every part of Chorus, in one place.

``chorus up``'s children, the split processes (``chorus engine``, ``chorus project``,
``chorus gateway``), ``chorus mcp``, the benches and the test fixtures all call it and ask
the ``Components`` for what they run: the engine (recorder, NATS connection, clock,
processor, worker, process managers, relay, sealer: ``EngineService``), the projection
runners (over ``PROJECTIONS``, the one list of read models), the gateway's configuration,
app and services. What a caller wants to be different (a fake clock, a recorder of its
own, fixed roles) it passes in here, and the same code wires it; no part is reached into
afterwards. Nothing below this package builds those parts for a process.

Parts are made on demand: the projector never opens the key store, the gateway never
reads the engine's checkpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chorus.bootstrap.engine_service import EngineConfig, EngineService, close_nats
from chorus.contracts.tracing import tracer_of
from chorus.contracts.workflow_types import WorkflowTypeRegistry
from chorus.engine.adapters.liveness import LivenessConfig
from chorus.engine.domain.authz import DEFAULT_ROLES, CachedRoles, Roles
from chorus.engine.processor import Clock, utc_now
from chorus.gateway.keys import KeyStore
from chorus.projections.agents import AgentsProjection
from chorus.projections.mcp import McpServersProjection
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import Projection, ProjectionRunner
from chorus.projections.sessions import SessionsProjection
from chorus.projections.tasks import AgentTasksProjection
from chorus.projections.workflows import WorkflowsProjection
from chorus.settings import Settings
from chorus.store.recorder import open_recorder
from chorus.typesfile import load_workflow_types
from eventsourcing.persistence import ApplicationRecorder
from opentelemetry.trace import TracerProvider

#: Seconds between ``chorus relay``'s looks at the store once it has caught up, when no
#: engine's commit signal (``chorus.engine.committed``) woke it sooner. Polling every 5 ms
#: instead cost the idle relay a tenth of a core (``chorus up`` doing nothing).
RELAY_POLL = 0.05

if TYPE_CHECKING:  # the engine and the projector never load the web framework
    from chorus.gateway.state import GatewayConfig, Services
    from litestar import Litestar

__all__ = [
    "PROJECTIONS",
    "Components",
    "EngineConfig",
    "EngineService",
    "KeyStoreRoles",
    "bootstrap",
    "close_nats",
    "key_store_roles",
]

#: Every read model ``chorus project`` runs and rebuilds, by name: the one list of them.
PROJECTIONS: dict[str, Callable[[], Projection]] = {
    "sessions": SessionsProjection,
    "workflows": WorkflowsProjection,
    "agents": AgentsProjection,
    "agent_tasks": AgentTasksProjection,
    "mcp": McpServersProjection,
}


class KeyStoreRoles:
    """The engine's ``Roles`` port (its operator directory) over the key store: the roles
    of an actor's active keys.

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


def _require_nats(settings: Settings) -> str:
    if not settings.nats_url:
        raise SystemExit("CHORUS_NATS_URL (or --nats-url) is required in split mode")
    return settings.nats_url


def _merged(
    fields: dict[str, Any], overrides: dict[str, Any], derived: dict[str, Callable[[], Any]]
) -> dict[str, Any]:
    """``fields`` under ``overrides``; a ``derived`` field is made only if not overridden
    (a test that brings its own roles never opens the key store)."""
    merged = fields | overrides
    return merged | {name: make() for name, make in derived.items() if name not in merged}


def _asyncapi() -> dict[str, Any]:
    from chorus.schema import asyncapi  # built from every contract: only for the gateway

    return asyncapi()


class Components:
    """What ``bootstrap`` wired; each method builds one process's parts from it."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        recorder: ApplicationRecorder | None,
        roles: Roles | None,
        workflow_types: WorkflowTypeRegistry | None,
        tracer_provider: TracerProvider | None,
    ) -> None:
        self.settings = settings.resolved()
        self.clock = clock
        self.tracer_provider = tracer_provider
        self._recorder = recorder
        self._roles = roles
        self._workflow_types = workflow_types

    # Shared parts, made once and only when asked for -------------------------------------

    @cached_property
    def roles(self) -> Roles:
        """Every actor's roles: given, or read from the deployment's key store."""
        return self._roles or key_store_roles(Path(str(self.settings.keys_path)))

    @cached_property
    def workflow_types(self) -> WorkflowTypeRegistry:
        """Built-ins plus the operator's file; a broken file stops the process with why."""
        return self._workflow_types or load_workflow_types(self.settings.workflow_types)

    def recorder(self) -> ApplicationRecorder:
        """The event store: the one given to ``bootstrap``, else a new connection to
        ``CHORUS_DATABASE_URL`` (each process, and each engine, has its own)."""
        if self._recorder is not None:
            return self._recorder
        return open_recorder(str(self.settings.database_url))

    # The engine ------------------------------------------------------------------------

    def engine_config(self, **overrides: Any) -> EngineConfig:
        """The engine's configuration from the settings; ``overrides`` replace fields."""
        s = self.settings
        fields: dict[str, Any] = {
            "database_url": str(s.database_url),
            "batch_max": s.batch_max,
            "batch_window": s.batch_window_ms / 1000,
            "cache_size": s.cache_size,
            "replicas": s.stream_replicas,
            "partitions": s.partitions,
            "partition_lease": s.partition_lease,
            "liveness_config": LivenessConfig(s.heartbeat_interval, s.missed_heartbeats),
            "seal_anchor_path": s.seal_anchor_path,
            "audit_key_path": s.audit_key_path,
            "session_quota": s.session_quota,
            "clock": self.clock,
            "tracer_provider": self.tracer_provider,
            "relay": s.engine_relay,
            "sealer": s.engine_relay,
        }
        return EngineConfig(**_merged(fields, overrides, {
            "nats_url": lambda: _require_nats(s),
            "workflow_types": lambda: self.workflow_types,
            "roles": lambda: self.roles,
        }))  # fmt: skip

    def engine(self, **overrides: Any) -> EngineService:
        """The engine process's parts (not started): ``await engine.start()``."""
        config = self.engine_config(**overrides)
        return EngineService(config, self._recorder)

    def relay(self, **overrides: Any) -> EngineService:
        """``chorus relay``: the relay and the sealer without the command path, woken by the
        engines' commit signals over the bus and polling the store every ``RELAY_POLL``
        seconds besides. Out of the engine's interpreter they leave it more of the GIL for
        commands."""
        fields = {"commands": False, "relay": True, "sealer": True, "relay_idle": RELAY_POLL}
        return self.engine(**{**fields, **overrides})

    # The projector -----------------------------------------------------------------------

    def projection_runners(
        self,
        names: list[str] | None = None,
        read_store_url: str | None = None,
        **runner_options: Any,
    ) -> list[ProjectionRunner]:
        """One runner per read model (``names``, default all), all on one read store and
        one recorder."""
        unknown = set(names or []) - set(PROJECTIONS)
        if unknown:
            raise SystemExit(
                f"unknown projection {', '.join(sorted(unknown))}; known: {', '.join(PROJECTIONS)}"
            )
        recorder = self.recorder()
        store = ReadStore(read_store_url or str(self.settings.read_store_url))
        tracer = tracer_of(self.tracer_provider, "chorus.projections")
        return [
            ProjectionRunner(recorder, store, PROJECTIONS[name](), tracer=tracer, **runner_options)
            for name in (names or list(PROJECTIONS))
        ]

    # The gateway -------------------------------------------------------------------------

    def gateway_config(self, **overrides: Any) -> GatewayConfig:
        """The gateway's configuration from the settings; ``overrides`` replace fields."""
        from chorus.gateway.state import GatewayConfig

        s = self.settings
        fields: dict[str, Any] = {
            "database_url": str(s.database_url),
            "read_store_url": str(s.read_store_url),
            "keys_path": str(s.keys_path),
            # The engine's anchors and the gateway's bundles are signed with one key.
            "audit_key_path": str(s.audit_key_path) if s.audit_key_path else None,
            "max_body_bytes": s.max_body_bytes,
            "tracer_provider": self.tracer_provider,
        }
        return GatewayConfig(**_merged(fields, overrides, {
            "nats_url": lambda: _require_nats(s),
            "edge": s.edge,
            "workflow_types": lambda: self.workflow_types,
            "asyncapi": _asyncapi,
        }))  # fmt: skip

    def gateway_app(self, **overrides: Any) -> Litestar:
        """The Litestar app over ``gateway_config(**overrides)``; its lifespan connects."""
        from chorus.gateway.app import create_app

        return create_app(self.gateway_config(**overrides))

    @asynccontextmanager
    async def gateway_services(
        self, config: GatewayConfig, **nats_options: Any
    ) -> AsyncIterator[Services]:
        """What the gateway's handlers share, connected (``chorus mcp`` serves over it)."""
        from chorus.gateway.state import connect_services

        audit_key_path = Path(str(config.audit_key_path or self.settings.audit_key_path))
        async with connect_services(config, audit_key_path, **nats_options) as services:
            yield services


def bootstrap(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    recorder: ApplicationRecorder | None = None,
    roles: Roles | None = None,
    workflow_types: WorkflowTypeRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Components:
    """Wire Chorus from ``settings``. Tests and benches pass their own parts here (a fake
    clock, a recorder, fixed roles, workflow types); what they leave out is built from the
    settings, as in production."""
    return Components(
        settings,
        clock=clock,
        recorder=recorder,
        roles=roles,
        workflow_types=workflow_types,
        tracer_provider=tracer_provider,
    )
