"""Authentication (API keys and JWTs), revocation, and role guards.

``Authorization: Bearer <credential>``, where the credential is an API key
(``chk_<id>_<secret>``) or a JWT (see ``chorus.gateway.jwt_tokens``). Browsers cannot set headers
on a WebSocket, so a WebSocket may instead pass ``?token=<credential>`` or offer the
subprotocol ``chorus.bearer.<credential>`` (beside ``chorus.v1``, the one the server
selects). The principal's actor is the actor of every command the request issues; no body
field can change it.

Missing or failed credentials are counted per client address (``auth_failures``); past
the limit the address gets 429 before its credential is looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from chorus.gateway.errors import Problem
from chorus.gateway.jwt_tokens import InvalidToken, Tokens
from chorus.gateway.keys import KeyStore, Principal
from chorus.gateway.ratelimit import RateLimiter, client_address, refusal
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp, Scope

log = logging.getLogger(__name__)

#: Roles that may issue commands; auditors only read.
WRITERS = frozenset({"agent", "operator", "admin"})
READERS = frozenset({"agent", "operator", "auditor", "admin"})
#: Roles that may read the record itself: history, time travel, exports, verification.
AUDITORS = frozenset({"auditor", "admin"})

CACHE_SECONDS = 5.0
SUBPROTOCOL = "chorus.v1"
BEARER_SUBPROTOCOL = "chorus.bearer."


class Revocations:
    """The ids of revoked keys, re-read from the key store every ``interval`` seconds.

    Tokens made from a revoked key, cached keys and open WebSockets are all checked
    against this set, so a revocation takes effect within about one interval everywhere.
    """

    def __init__(self, store: KeyStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.revoked: set[str] = store.revoked_ids()

    def is_revoked(self, key_id: str) -> bool:
        return bool(key_id) and key_id in self.revoked

    async def refresh(self) -> None:
        self.revoked = await asyncio.to_thread(self.store.revoked_ids)

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # a busy or briefly locked store: keep the last set
                log.warning("could not re-read revoked keys", exc_info=True)

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        task = asyncio.create_task(self.follow(), name="revocations")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class KeyCache:
    """Saves a database round trip per request; revocations apply at once via ``Revocations``."""

    def __init__(self, store: KeyStore, revocations: Revocations | None = None) -> None:
        self.store = store
        self.revocations = revocations
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def authenticate(self, key: str) -> Principal | None:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or now - hit[0] >= CACHE_SECONDS:
            if len(self._cache) > 10_000:
                self._cache.clear()
            hit = (now, self.store.authenticate(key))
            self._cache[key] = hit
        principal = hit[1]
        if (
            principal is not None
            and self.revocations
            and self.revocations.is_revoked(principal.key_id)
        ):
            return None
        return principal


def credential_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The bearer credential: the header, or for a WebSocket the query or subprotocol."""
    header = connection.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    if connection.scope["type"] != ScopeType.WEBSOCKET:
        return ""
    for offered in offered_subprotocols(connection.scope):
        if offered.startswith(BEARER_SUBPROTOCOL):
            return offered[len(BEARER_SUBPROTOCOL) :]
    return str(connection.query_params.get("token", ""))


def offered_subprotocols(scope: Scope) -> list[str]:
    offered: Any = scope.get("subprotocols") or []
    return [str(p).strip() for p in offered]


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    def __init__(
        self, app: ASGIApp, keys: KeyCache, tokens: Tokens, revocations: Revocations,
        limiter: RateLimiter, exclude: list[str],
    ) -> None:  # fmt: skip
        super().__init__(app, exclude=exclude)
        self.keys = keys
        self.tokens = tokens
        self.revocations = revocations
        self.limiter = limiter

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        who = f"addr:{client_address(connection.scope)}"
        blocked = await self.limiter.exhausted("auth_failures", who)
        if blocked is not None:
            raise refusal(blocked, "failed authentications from this address")
        credential = credential_of(connection)
        if not credential:
            await self.limiter.hit("auth_failures", who)
            raise Problem(
                401, "unauthenticated", "send Authorization: Bearer <api key or token>",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        principal, why = await self._principal(credential)
        if principal is None:
            await self.limiter.hit("auth_failures", who)
            raise Problem(
                401, "invalid_credentials", why,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )  # fmt: skip
        return AuthenticationResult(user=principal, auth=credential)

    async def _principal(self, credential: str) -> tuple[Principal | None, str]:
        if credential.startswith("chk_") or credential.count(".") != 2:
            return self.keys.authenticate(credential), "the API key is unknown or revoked"
        try:
            principal = await self.tokens.verify(credential)
        except InvalidToken as error:
            return None, str(error)
        if self.revocations.is_revoked(principal.key_id):
            return None, "the API key this token was made from has been revoked"
        return principal, ""


def require_roles(*roles: str) -> Any:
    """A guard letting only the given roles through (403 ``forbidden`` otherwise)."""
    allowed = frozenset(roles)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if connection.scope.get("method") == "OPTIONS":
            return  # the automatic OPTIONS answer is public (no credential is read for it)
        principal: Principal = connection.user
        if principal.role not in allowed:
            raise Problem(
                403, "forbidden",
                f"role {principal.role} may not do this (allowed: {', '.join(sorted(allowed))})",
            )  # fmt: skip

    guard.roles = allowed  # type: ignore[attr-defined]  # read by the authorization matrix
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
