"""API documentation that works offline: Swagger UI and ReDoc from assets shipped in the
package (``gateway/static/vendor``, see its README for versions and licences), no CDN, no
web fonts; the bus's AsyncAPI document as JSON and as a plain server-rendered page.

Paths: ``/schema`` (Swagger UI), ``/schema/swagger``, ``/schema/redoc``,
``/schema/openapi.json``; the seed's ``/docs`` and ``/redoc`` lead there. The AsyncAPI
document is built by the composition root (it needs the event types, which the gateway
does not import) and handed over in ``GatewayConfig.asyncapi``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from chorus.gateway.errors import Problem
from chorus.gateway.state import ServicesDep
from litestar import MediaType, Response, Router, get
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/static"
_VENDOR = f"{STATIC_URL}/vendor"
FAVICON = f"<link rel='icon' type='image/png' href='{_VENDOR}/swagger-ui/favicon-32x32.png'>"

#: Every docs page and its assets, for the authentication middleware's public paths.
PUBLIC_PATHS = ["^/static/", "^/docs$", "^/redoc$", "^/asyncapi"]


def render_plugins() -> list[Any]:
    """Swagger UI first (so it is also ``/schema`` itself), then ReDoc."""
    return [
        SwaggerRenderPlugin(
            js_url=f"{_VENDOR}/swagger-ui/swagger-ui-bundle.js",
            css_url=f"{_VENDOR}/swagger-ui/swagger-ui.css",
            standalone_preset_js_url=f"{_VENDOR}/swagger-ui/swagger-ui-standalone-preset.js",
            path="/swagger",
            favicon=FAVICON,
        ),
        RedocRenderPlugin(
            js_url=f"{_VENDOR}/redoc/redoc.standalone.js",
            google_fonts=False,
            path="/redoc",
            favicon=FAVICON,
        ),
    ]


static_files: Router = create_static_files_router(
    path=STATIC_URL, directories=[STATIC_DIR], opt={"exclude_from_auth": True}
)


@get("/docs", include_in_schema=False)
async def docs_alias() -> Redirect:
    return Redirect("/schema/swagger")


@get("/redoc", include_in_schema=False)
async def redoc_alias() -> Redirect:
    return Redirect("/schema/redoc")


def _document(services: ServicesDep) -> dict[str, Any]:
    document = services.config.asyncapi
    if document is None:
        raise Problem(404, "not_found", "this gateway was started without an AsyncAPI document")
    return document


@get("/asyncapi.json", tags=["docs"], summary="AsyncAPI 3 document of the NATS bus")
async def asyncapi_json(services: ServicesDep) -> dict[str, Any]:
    return _document(services)


@get("/asyncapi", include_in_schema=False, media_type=MediaType.HTML)
async def asyncapi_page(services: ServicesDep) -> Response[str]:
    return Response(
        render_asyncapi(_document(services)),
        media_type=MediaType.HTML,
        # A static page: its own inline style and favicon, nothing else.
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                 "img-src 'self'; frame-ancestors 'none'"},
    )  # fmt: skip


def render_asyncapi(document: dict[str, Any]) -> str:
    """The channels, their operations and payload schemas as one static page (no script)."""
    e = html.escape
    messages = document.get("components", {}).get("messages", {})
    schemas = document.get("components", {}).get("schemas", {})
    operations = {
        op["channel"]["$ref"].rsplit("/", 1)[-1]: op
        for op in document.get("operations", {}).values()
    }
    sections = []
    for key, channel in document.get("channels", {}).items():
        op = operations.get(key, {})
        parts = [f"<h2 id='{e(key)}'><code>{e(channel['address'])}</code></h2>"]
        if op:
            parts.append(f"<p><b>{e(op.get('action', ''))}</b> {e(op.get('summary', ''))}</p>")
        if channel.get("description"):
            parts.append(f"<p>{e(channel['description'])}</p>")
        for ref in channel.get("messages", {}).values():
            message = messages.get(ref["$ref"].rsplit("/", 1)[-1], {})
            payload = message.get("payload", {})
            name = payload.get("$ref", "").rsplit("/", 1)[-1]
            schema = schemas.get(name, payload)
            parts.append(
                f"<details><summary>payload <code>{e(name or 'inline')}</code></summary>"
                f"<pre>{e(json.dumps(schema, indent=2))}</pre></details>"
            )
        sections.append("<section>" + "".join(parts) + "</section>")
    title = e(document.get("info", {}).get("title", "AsyncAPI"))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{FAVICON}"
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}pre{background:#f5f5f5;padding:.5rem;overflow:auto}"
        "section{border-top:1px solid #ddd}</style></head><body>"
        f"<h1>{title} (AsyncAPI {e(str(document.get('asyncapi', '')))})</h1>"
        "<p>Commands are NATS requests answered with a Reply; "
        "<a href='/asyncapi.json'>the document as JSON</a>.</p>"
        + "".join(sections)
        + "</body></html>"
    )
