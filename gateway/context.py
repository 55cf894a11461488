"""Request context for logs and traces.

``LogContextMiddleware`` binds each request's id and caller to the log context (see
``chorus.contracts.logcontext``); placed after authentication, so the actor is known, every line
logged while the request is handled (an unexpected error's stack trace too) carries both.
``http_tracing`` is Litestar's own OpenTelemetry middleware (the server span of each
request), present only when tracing is on.
"""

from __future__ import annotations

from typing import Any

from chorus.contracts import logcontext
from chorus.gateway.errors import request_id_of
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware, DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry.trace import Span, TracerProvider


class LogContextMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        user = scope.get("user")
        with logcontext.bound(request_id=request_id_of(scope), actor=getattr(user, "actor", None)):
            await next_app(scope, receive, send)


def _tag_request(span: Span, scope: dict[str, Any]) -> None:
    """Make the request id and the caller's correlation id searchable on the span."""
    headers = dict(scope.get("headers", []))
    span.set_attribute("chorus.request_id", request_id_of(scope))  # type: ignore[arg-type]
    if correlation := headers.get(b"x-correlation-id"):
        span.set_attribute("chorus.correlation_id", correlation.decode(errors="replace"))


def http_tracing(provider: TracerProvider | None) -> list[DefineMiddleware]:
    if provider is None:
        return []
    from litestar.plugins.opentelemetry import OpenTelemetryConfig

    config = OpenTelemetryConfig(
        tracer_provider=provider, exclude_spans=["receive", "send"],
        server_request_hook_handler=_tag_request, scopes={ScopeType.HTTP},
    )  # fmt: skip
    return [config.middleware]
