"""Rate limits per actor and route class, per address before authentication; session quota.

Counting is the ``limits`` library's moving window (exact: no burst at a window edge),
in memory by default or in any ``limits`` storage (``async+redis://`` lets several gateways
share counts). Litestar's own ``RateLimitConfig`` is not used: it holds one limit per
middleware with one key prefix, cannot count failed credentials (they are refused before
any inner middleware runs), and sends no ``Retry-After``.

Who is counted: an authenticated caller by actor (all its keys and tokens together), an
unauthenticated one (public paths) by client address. Failed credentials are counted per
address in ``auth_failures``; past that limit the address gets 429 before any key is
checked, so keys cannot be guessed at speed. Route classes and their defaults are in
``DEFAULT_LIMITS``; ``CHORUS_RATE_LIMITS`` overrides any of them, e.g. the seed's
``{"workflows": "10/minute"}``.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from chorus.gateway.errors import Problem
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services
from chorus.projections import sessions as sessions_model
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_LIMITS = {
    "read": "1200/minute",  # GET, per actor
    "write": "300/minute",  # commands, per actor
    "workflows": "300/minute",  # POST /api/v1/workflows and /execute-workflow, per actor
    "token": "30/minute",  # POST /api/v1/auth/token, per actor
    "feed": "120/minute",  # WebSocket connections opened, per actor
    "public": "600/minute",  # /health, /ready, /schema: per client address
    "auth_failures": "30/minute",  # missing or failed credentials: per client address
}
OFF = frozenset({"off", "none", "0"})

#: (method, path) -> class, checked before the method's default (GET read, else write).
ROUTE_CLASSES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/api/v1/workflows/?$"), "workflows"),
    ("POST", re.compile(r"^/execute-workflow/?$"), "workflows"),
    ("POST", re.compile(r"^/api/v1/auth/token/?$"), "token"),
]
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def route_class(scope: Scope) -> str:
    if scope["type"] == ScopeType.WEBSOCKET:
        return "feed"
    method, path = scope.get("method", "GET"), scope.get("path", "")
    for want, pattern, name in ROUTE_CLASSES:
        if method == want and pattern.match(path):
            return name
    return "read" if method in READ_METHODS else "write"


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the oldest counted call leaves the window.
    reset: int
    window: int

    def headers(self) -> dict[str, str]:
        """The IETF draft's ``RateLimit-*`` fields, and ``Retry-After`` on a refusal."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f"{self.limit};w={self.window}",
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset))
        return headers


class RateLimiter:
    """Moving-window counters per (route class, identity)."""

    def __init__(self, overrides: dict[str, str] | None = None, storage: str = "async+memory://"):
        specs = {**DEFAULT_LIMITS, **(overrides or {})}
        unknown = set(specs) - set(DEFAULT_LIMITS)
        if unknown:
            raise ValueError(
                f"unknown rate limit class {', '.join(sorted(unknown))}; "
                f"known: {', '.join(DEFAULT_LIMITS)}"
            )
        self.items: dict[str, RateLimitItem | None] = {}
        for name, spec in specs.items():
            try:
                self.items[name] = None if spec.strip().lower() in OFF else parse(spec)
            except ValueError as error:
                raise ValueError(f"rate limit {name}={spec!r}: {error}") from None
        self.strategy = MovingWindowRateLimiter(storage_from_string(storage))

    async def hit(self, name: str, who: str) -> Decision | None:
        """Count one call; ``None`` when the class is not limited."""
        item = self.items[name]
        if item is None:
            return None
        allowed = await self.strategy.hit(item, name, who)
        return await self._decision(item, name, who, allowed)

    async def exhausted(self, name: str, who: str) -> Decision | None:
        """The refusal if ``who`` has no calls left in ``name`` (counts nothing)."""
        item = self.items[name]
        if item is None or await self.strategy.test(item, name, who):
            return None
        return await self._decision(item, name, who, False)

    async def _decision(self, item: RateLimitItem, name: str, who: str, allowed: bool) -> Decision:
        stats = await self.strategy.get_window_stats(item, name, who)
        # ``limits`` stamps entries with time.time(): its reset time is on that clock.
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return Decision(allowed, item.amount, max(0, stats.remaining), reset, item.get_expiry())


def refusal(decision: Decision, what: str) -> Problem:
    return Problem(
        429, "rate_limited",
        f"more than {decision.limit} {what} in {decision.window} s; "
        f"retry after {max(1, decision.reset)} s",
        headers=decision.headers(),
    )  # fmt: skip


class RateLimitMiddleware:
    """Counts each call of an authenticated actor (or, on public paths, of an address) in its
    route class, refuses with 429 past the limit, and adds ``RateLimit-*`` headers."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        user: Any = scope.get("user")
        if user is None:
            name, who = "public", f"addr:{client_address(scope)}"
        else:
            name, who = route_class(scope), f"actor:{user.actor}"
        decision = await self.limiter.hit(name, who)
        if decision is not None and not decision.allowed:
            raise refusal(decision, f"{name} calls")
        if decision is None or scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        extra = decision.headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for key, value in extra.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def check_session_quota(
    services: Services, principal: Principal, session_id: str, participants: list[str]
) -> None:
    """429 ``session_quota_exceeded`` when an agent already holds ``session_quota`` open
    sessions naming other agents. Routing by size always names others. Operators and
    admins run fleets and are not bound; a retry of a session already opened passes."""
    quota = services.config.edge.session_quota
    if quota <= 0 or principal.role != "agent":
        return
    if participants and all(p == principal.actor for p in participants):
        return
    if await services.read(sessions_model.get_session, session_id) is not None:
        return  # a retry: the command answers duplicate (or session_exists)
    held = await services.read(sessions_model.open_sessions_naming_others, principal.actor)
    if held >= quota:
        raise Problem(
            429, "session_quota_exceeded",
            f"{principal.actor} already holds {held} open sessions naming other agents "
            f"(at most {quota}); close or cancel one first",
            details={"open": held, "quota": quota},
        )  # fmt: skip
