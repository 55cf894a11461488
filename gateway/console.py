"""The live web console at ``/console`` (``/`` leads there).

One page, server-rendered as a static shell, with a small script and no framework and no
build step: the data comes from the REST API with the user's own key (so every role sees
exactly what that key may read) and stays live through WebSocket feeds, never a polling
loop. The page and its assets ship in the package, so it works offline. Why not a bundled
single-page app: it would need a JavaScript build in the release process and would show
nothing the API does not already serve; a page of plain DOM code stays reviewable.
"""

from __future__ import annotations

from typing import Any

from chorus.gateway.auth import can_read
from chorus.gateway.docs import STATIC_DIR
from chorus.gateway.keys import Principal
from litestar import MediaType, Request, Response, get
from litestar.response import Redirect

PAGE = STATIC_DIR / "console" / "console.html"

#: The console's page is public; what it shows needs a key.
PUBLIC_PATHS = ["^/$", "^/console$"]


@get("/", include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/console")


@get("/console", include_in_schema=False, media_type=MediaType.HTML)
async def console_page() -> Response[bytes]:
    return Response(
        PAGE.read_bytes(),
        media_type=MediaType.HTML,
        # The page runs only its own script and connects only to this gateway.
        headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'",
            "Cache-Control": "no-cache",
        },
    )


@get("/api/v1/console/me", guards=[can_read], tags=["console"],
     summary="The caller's actor and role (what the console signs in as)")  # fmt: skip
async def whoami(request: Request[Principal, Any, Any]) -> dict[str, str]:
    return {"actor": request.user.actor, "role": request.user.role}
