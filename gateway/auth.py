"""Bearer-key authentication and role guards.

``Authorization: Bearer <key>``; a WebSocket may pass ``?token=<key>`` instead, since
browsers cannot set headers on WebSocket requests. The principal's actor is the actor of
every command the request issues; no body field can change it.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

from gateway.errors import Problem
from gateway.keys import KeyStore, Principal

#: Roles that may issue commands; auditors only read.
WRITERS = frozenset({"agent", "operator", "admin"})
READERS = frozenset({"agent", "operator", "auditor", "admin"})
#: Roles that may read the record itself: history, time travel, exports, verification.
AUDITORS = frozenset({"auditor", "admin"})

CACHE_SECONDS = 5.0


class KeyCache:
    """Saves a database round trip per request; a revoked key stops working within 5 s."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def authenticate(self, key: str) -> Principal | None:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        principal = self.store.authenticate(key)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now, principal)
        return principal


class BearerKeyMiddleware(AbstractAuthenticationMiddleware):
    def __init__(self, app: ASGIApp, keys: KeyCache, exclude: list[str]) -> None:
        super().__init__(app, exclude=exclude)
        self.keys = keys

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        key = ""
        if header[:7].lower() == "bearer ":
            key = header[7:].strip()
        elif connection.scope["type"] == "websocket":
            key = connection.query_params.get("token", "")
        if not key:
            raise Problem(
                401, "unauthenticated", "send Authorization: Bearer <api key>",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        principal = self.keys.authenticate(key)
        if principal is None:
            raise Problem(
                401, "invalid_credentials", "the API key is unknown or revoked",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )  # fmt: skip
        return AuthenticationResult(user=principal, auth=key)


def require_roles(*roles: str) -> Any:
    """A guard letting only the given roles through (403 ``forbidden`` otherwise)."""
    allowed = frozenset(roles)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal: Principal = connection.user
        if principal.role not in allowed:
            raise Problem(
                403, "forbidden",
                f"role {principal.role} may not do this (allowed: {', '.join(sorted(allowed))})",
            )  # fmt: skip

    return guard


can_write = require_roles(*WRITERS)
can_read = require_roles(*READERS)
can_audit = require_roles(*AUDITORS)


def check_auditor(principal: Principal) -> None:
    """For a read that needs the auditor role only with some parameters (time travel)."""
    if principal.role not in AUDITORS:
        raise Problem(
            403, "forbidden",
            f"role {principal.role} may not read past states (allowed: admin, auditor)",
        )  # fmt: skip
