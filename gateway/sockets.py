"""What every WebSocket gets at the edge: an Origin check, the subprotocol, and a credential
that is re-checked while the socket is open.

- **Origin**: a browser names the page's origin; one that is neither this gateway's own
  (same host) nor in the CORS allow-list is refused before the handshake completes, so a
  page elsewhere cannot ride a user's token into a feed. Clients that send no Origin
  (agents, command-line tools) are not browsers and pass.
- **Subprotocol**: a browser that sends its token as the subprotocol
  ``chorus.bearer.<token>`` also offers ``chorus.v1``; the accept selects ``chorus.v1``
  (never the token), as browsers require an offered protocol to be selected.
- **Re-check**: every ``recheck_seconds`` the socket's credential is checked again; once its
  key is revoked or its token has expired, the feed is stopped and the socket closed with
  code 4401 and the reason (``credential_revoked`` / ``credential_expired``), after a last
  ``{"type": "error", ...}`` message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from chorus.gateway.auth import SUBPROTOCOL, Revocations, offered_subprotocols
from chorus.gateway.keys import Principal
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

CLOSE_CREDENTIAL = 4401
CLOSE_ORIGIN = 4403


def host_of(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"host":
            return bytes(value).decode("latin-1").lower()
    return ""


def origin_allowed(origin: str, host: str, allowed: frozenset[str]) -> bool:
    if origin.rstrip("/") in allowed or "*" in allowed:
        return True
    return urlsplit(origin).netloc.lower() == host


class SocketGuardMiddleware:
    def __init__(
        self, app: ASGIApp, revocations: Revocations, origins: tuple[str, ...],
        interval: float, clock: Callable[[], float],
    ) -> None:  # fmt: skip
        self.app = app
        self.revocations = revocations
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.interval = interval
        self.clock = clock

    def why_invalid(self, principal: Principal) -> str | None:
        if self.revocations.is_revoked(principal.key_id):
            return "credential_revoked"
        if principal.expires_at is not None and self.clock() > principal.expires_at:
            return "credential_expired"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.WEBSOCKET:
            await self.app(scope, receive, send)
            return
        origin = dict(scope.get("headers", [])).get(b"origin")
        if origin is not None and not origin_allowed(
            bytes(origin).decode("latin-1"), host_of(scope), self.origins
        ):
            await send({"type": "websocket.close", "code": CLOSE_ORIGIN,
                        "reason": "origin_not_allowed"})  # fmt: skip
            return
        principal: Principal | None = scope.get("user")
        state = {"accepted": False, "closed": False}
        offers = SUBPROTOCOL in offered_subprotocols(scope)

        async def guarded_send(message: Message) -> None:
            if message["type"] == "websocket.accept":
                state["accepted"] = True
                if offers and not message.get("subprotocol"):
                    message = {**message, "subprotocol": SUBPROTOCOL}
            elif message["type"] == "websocket.close":
                state["closed"] = True
            await send(message)

        if principal is None:
            await self.app(scope, receive, guarded_send)
            return

        async def serve() -> None:
            await self.app(scope, receive, guarded_send)

        serving = asyncio.create_task(serve())
        watching = asyncio.create_task(self.watch(principal))
        try:
            await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, watching):
                task.cancel()
            for task in (serving, watching):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if watching.done() and not watching.cancelled() and not state["closed"]:
            reason = watching.result()
            with contextlib.suppress(Exception):  # the client may be gone already
                if state["accepted"]:
                    text = json.dumps({"type": "error", "code": reason,
                                       "message": "the credential of this socket is no longer valid"})  # fmt: skip
                    notice: Any = {"type": "websocket.send", "text": text}
                    await send(notice)
                await send({"type": "websocket.close", "code": CLOSE_CREDENTIAL, "reason": reason})

    async def watch(self, principal: Principal) -> str:
        """Returns why the credential stopped being valid (never returns while it is)."""
        while (why := self.why_invalid(principal)) is None:  # noqa: ASYNC110 (a clock, no event)
            await asyncio.sleep(self.interval)
        return why
