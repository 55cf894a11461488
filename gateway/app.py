"""Building the Litestar application (one factory; no module-level connections)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from contracts.workflow_types import WorkflowTypeRegistry
from gateway.agent_feed import agent_feed
from gateway.agents import AgentController
from gateway.audit import AuditController, global_log
from gateway.auth import BearerKeyMiddleware, KeyCache
from gateway.errors import EXCEPTION_HANDLERS, add_request_id_header
from gateway.feeds import session_feed, workflow_feed
from gateway.health import health, ready
from gateway.keys import KeyStore
from gateway.mcp_http import McpHttp
from gateway.mcp_registry import McpServerController, list_tools
from gateway.sessions import SessionController
from gateway.state import GatewayConfig, Services, connect_services
from gateway.workflow_types import define_workflow_type, list_workflow_types
from gateway.workflows import (
    WorkflowController,
    execute_workflow,
    workflow_status_alias,
)

PUBLIC_PATHS = ["^/health$", "^/ready$", "^/schema"]


def create_app(config: GatewayConfig) -> Litestar:
    services_box: dict[str, Services] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with connect_services(config, workflow_types, audit_key_path) as services:
            services_box["services"] = services
            yield

    def provide_services() -> Services:
        return services_box["services"]

    mcp_http = McpHttp(provide_services)
    keys = KeyCache(KeyStore(Path(config.keys_path)))
    audit_key_path = Path(
        config.audit_key_path or Path(config.keys_path).parent / "audit" / "signing.key"
    )
    # Loaded at build time: a broken types file stops the gateway with its reason.
    workflow_types = WorkflowTypeRegistry.load(
        Path(config.workflow_types_path) if config.workflow_types_path else None
    )
    return Litestar(
        route_handlers=[
            SessionController,
            session_feed,
            WorkflowController,
            workflow_feed,
            execute_workflow,
            workflow_status_alias,
            list_workflow_types,
            define_workflow_type,
            AgentController,
            agent_feed,
            global_log,
            AuditController,
            health,
            ready,
            mcp_http.route(),
            McpServerController,
            list_tools,
        ],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        lifespan=[lifespan, mcp_http.lifespan],
        middleware=[DefineMiddleware(BearerKeyMiddleware, keys=keys, exclude=PUBLIC_PATHS)],
        before_send=[add_request_id_header],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=config.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Chorus",
            version="1",
            description="Event-sourced coordination for fleets of agents. "
            "Authenticate with `Authorization: Bearer <api key>`.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(type="http", scheme="bearer", description="API key")
                }
            ),
            security=[{"apiKey": []}],
        ),
        debug=False,
    )
