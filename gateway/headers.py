"""Security headers on every response, and the CORS and allowed-hosts configuration.

Headers are set in a ``before_send`` hook so that they reach every response, also the
404 of an unknown path and the 401 of the auth middleware, which route-level middleware
never sees. A header that a handler set itself is left alone (a handler may know better,
for example a cacheable export).

The API answers only JSON and never renders in a frame, so its CSP denies everything. The
docs pages (``/schema``) are HTML that load the renderers' scripts and styles from the
origins their plugins name and run an inline configuration script: their CSP allows exactly
those origins, inline code, and fetches of the schema from this origin.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from chorus.gateway.errors import Problem
from litestar.config.cors import CORSConfig
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PREFIX = "/schema"
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

#: Always set (unless the response set them).
COMMON = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


def docs_csp(plugins: Iterable[OpenAPIRenderPlugin]) -> str:
    """A CSP under which the docs renderers work: their asset origins, inline config."""
    origins: set[str] = set()
    for plugin in plugins:
        for name in ("js_url", "css_url", "standalone_preset_js_url"):
            url = getattr(plugin, name, None)
            if isinstance(url, str) and url.startswith("https://"):
                parts = urlsplit(url)
                origins.add(f"{parts.scheme}://{parts.netloc}")
    extra = " ".join(sorted(origins))
    return (
        "default-src 'self'; "
        f"script-src 'self' 'unsafe-inline' {extra}; "
        f"style-src 'self' 'unsafe-inline' {extra}; "
        "img-src 'self' data: https:; font-src 'self' data: https:; "
        "connect-src 'self'; worker-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
    ).replace("  ", " ")


class SecurityHeaders:
    """The ``before_send`` hook: common headers, a CSP per kind of page, ``no-store``."""

    def __init__(self, plugins: Iterable[OpenAPIRenderPlugin]) -> None:
        self.docs_csp = docs_csp(plugins).encode()

    async def __call__(self, message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = list(message.get("headers", []))
        present = {bytes(name).lower() for name, _ in headers}
        docs = scope.get("path", "").startswith(DOCS_PREFIX)
        wanted = dict(COMMON)
        wanted["content-security-policy"] = self.docs_csp.decode() if docs else API_CSP
        if not docs:
            wanted["cache-control"] = "no-store"
        for name, value in wanted.items():
            if name.encode() not in present:
                headers.append((name.encode(), value.encode()))
        message["headers"] = headers


def cors_config(origins: Iterable[str]) -> CORSConfig | None:
    """CORS for the listed origins only; ``None`` (no CORS headers at all) when empty.

    Credentials travel in ``Authorization`` (not cookies), so ``allow_credentials`` stays
    off and a page from an allowed origin must hold a token itself.
    """
    allowed = [o.rstrip("/") for o in origins if o.strip()]
    if not allowed:
        return None
    return CORSConfig(
        allow_origins=allowed,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "X-Request-Id",
            "X-Correlation-Id",
            "Accept",
        ],
        expose_headers=[
            "X-Request-Id",
            "Location",
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "RateLimit-Policy",
            "Idempotent-Replayed",
        ],
        allow_credentials=False,
        max_age=600,
    )


class AllowedHostsMiddleware:
    """400 ``invalid_host`` for a ``Host`` not in the list (``*.example.com`` wildcards; any
    port). Against DNS rebinding: a page on a name that resolves to this gateway is not a
    page of this gateway. Litestar's own check matches the port too and answers plain JSON."""

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...]) -> None:
        self.app = app
        names = [
            rf"(?:[^.:]+\.)+{re.escape(h[2:])}" if h.startswith("*.") else re.escape(h)
            for h in hosts
        ]
        self.pattern = re.compile(rf"(?:{'|'.join(names)})(?::\d+)?", re.IGNORECASE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            if not self.pattern.fullmatch(host):
                raise Problem(400, "invalid_host", f"host {host!r} is not served here")
        await self.app(scope, receive, send)
