"""Building the Litestar application (one factory; no module-level connections)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from chorus.gateway.agent_feed import agent_feed
from chorus.gateway.agents import AgentController, recent_verdicts
from chorus.gateway.audit import AuditController, global_log
from chorus.gateway.auth import BearerAuthMiddleware, KeyCache, Revocations
from chorus.gateway.console import PUBLIC_PATHS as CONSOLE_PATHS
from chorus.gateway.console import console_page, root, whoami
from chorus.gateway.console_feed import events_feed
from chorus.gateway.context import LogContextMiddleware, http_tracing
from chorus.gateway.docs import PUBLIC_PATHS as DOCS_PATHS
from chorus.gateway.docs import (
    asyncapi_json,
    asyncapi_page,
    docs_alias,
    redoc_alias,
    render_plugins,
    static_files,
)
from chorus.gateway.errors import EXCEPTION_HANDLERS, add_request_id_header, problem_details
from chorus.gateway.feeds import session_feed, workflow_feed
from chorus.gateway.headers import AllowedHostsMiddleware, SecurityHeaders, cors_config
from chorus.gateway.health import health, ready
from chorus.gateway.jwt_tokens import Tokens, issue_token, load_secret
from chorus.gateway.keys import KeyStore
from chorus.gateway.mcp_bus import ToolCallService
from chorus.gateway.mcp_http import McpHttp
from chorus.gateway.mcp_registry import McpServerController, list_tools
from chorus.gateway.metrics import (
    HTTP_METRICS,
    FeedSubscribersMiddleware,
    metrics_overview,
    prometheus_metrics,
)
from chorus.gateway.openapi import document
from chorus.gateway.ratelimit import RateLimiter, RateLimitMiddleware
from chorus.gateway.sessions import SessionController
from chorus.gateway.sockets import SocketGuardMiddleware
from chorus.gateway.state import GatewayConfig, Services, connect_services
from chorus.gateway.workflow_types import define_workflow_type, list_workflow_types
from chorus.gateway.workflows import (
    WorkflowController,
    execute_workflow,
    workflow_status_alias,
)
from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

PUBLIC_PATHS = ["^/health$", "^/ready$", "^/schema", "^/metrics$", *DOCS_PATHS, *CONSOLE_PATHS]


def create_app(config: GatewayConfig) -> Litestar:
    services_box: dict[str, Services] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with connect_services(config, audit_key_path) as services:
            services_box["services"] = services
            tool_calls = ToolCallService(services, key_store)  # chorus.cmd.*.tool.call
            await tool_calls.start()
            try:
                yield
            finally:
                await tool_calls.stop()

    def provide_services() -> Services:
        return services_box["services"]

    mcp_http = McpHttp(provide_services)
    edge = config.edge
    key_store = KeyStore(Path(config.keys_path))
    revocations = Revocations(key_store, edge.recheck_seconds)
    keys = KeyCache(key_store, revocations)
    tokens = Tokens(edge, load_secret(edge, config.keys_path))
    limiter = RateLimiter(edge.rate_limits, edge.rate_limit_storage)
    docs = render_plugins()
    audit_key_path = Path(
        config.audit_key_path or Path(config.keys_path).parent / "audit" / "signing.key"
    )
    app = Litestar(
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
            recent_verdicts,
            agent_feed,
            global_log,
            AuditController,
            health,
            ready,
            issue_token,
            mcp_http.route(),
            McpServerController,
            list_tools,
            prometheus_metrics,
            metrics_overview,
            static_files,
            docs_alias,
            redoc_alias,
            asyncapi_json,
            asyncapi_page,
            root,
            console_page,
            whoami,
            events_feed,
        ],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "tokens": Provide(lambda: tokens, sync_to_thread=False),
        },
        lifespan=[lifespan, revocations.lifespan, mcp_http.lifespan],
        # Outermost first: who is calling, how often, and (WebSockets) for how long.
        middleware=[
            *http_tracing(config.tracer_provider),  # the request's server span
            HTTP_METRICS.middleware,  # counts refusals (401, 429) too
            *(
                []
                if "*" in edge.allowed_hosts
                else [DefineMiddleware(AllowedHostsMiddleware, hosts=edge.allowed_hosts)]
            ),
            DefineMiddleware(
                BearerAuthMiddleware,
                keys=keys,
                tokens=tokens,
                revocations=revocations,
                limiter=limiter,
                exclude=PUBLIC_PATHS,
            ),
            DefineMiddleware(RateLimitMiddleware, limiter=limiter),
            DefineMiddleware(
                SocketGuardMiddleware,
                revocations=revocations,
                origins=edge.cors_origins,
                interval=edge.recheck_seconds,
                clock=edge.clock,
            ),
            FeedSubscribersMiddleware(),
            LogContextMiddleware(),
        ],
        before_send=[add_request_id_header, SecurityHeaders(docs)],
        cors_config=cors_config(edge.cors_origins),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        plugins=[problem_details()],
        request_max_body_size=config.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Chorus",
            version="1",
            description="Event-sourced coordination for fleets of agents. "
            "Authenticate with `Authorization: Bearer <api key or JWT>`; "
            "`POST /api/v1/auth/token` exchanges a key for a short-lived JWT.",
            path="/schema",
            render_plugins=docs,
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="http", scheme="bearer", description="API key or JWT"
                    )
                }
            ),
            security=[{"apiKey": []}],
        ),
        debug=False,
        logging_config=None,  # the process configures logging (JSON lines, runtime.logs)
    )
    document(app, PUBLIC_PATHS)
    return app
