"""Configuration of the HTTP edge: JWT, rate limits, CORS, allowed hosts, WebSocket checks.

One dataclass, so ``chorus.settings`` maps ``CHORUS_*`` variables onto it in one place and
tests build a gateway with tiny limits or a fake clock without touching the environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class EdgeConfig:
    #: HS256 secret for tokens (``CHORUS_JWT_SECRET``); when unset the gateway keeps a random
    #: one in ``jwt_secret_path`` (default ``<dir of keys_path>/jwt.secret``, created 0600).
    jwt_secret: str | None = None
    jwt_secret_path: str | None = None
    #: A JWKS (file path or https URL) whose RS256 / ES256 / EdDSA keys sign tokens that an
    #: identity provider issues; ``sub`` is the actor, ``role`` the role.
    jwt_jwks: str | None = None
    jwt_issuer: str = "chorus"
    jwt_audience: str = "chorus"
    #: Lifetime of tokens issued by ``POST /api/v1/auth/token``.
    jwt_ttl_seconds: int = 900
    #: Clock skew allowed on ``exp``, ``nbf`` and ``iat``.
    jwt_leeway_seconds: float = 30.0
    #: Route class -> limit (``"10/minute"``), over the defaults in ``chorus.gateway.ratelimit``.
    rate_limits: dict[str, str] = field(default_factory=dict)
    #: A ``limits`` storage URI; ``async+redis://host`` shares counts between gateways.
    rate_limit_storage: str = "async+memory://"
    #: Open sessions naming other agents that one agent actor may hold at once (0: no bound).
    session_quota: int = 20
    #: Browser origins allowed by CORS and on WebSockets; empty: CORS off, same origin only.
    cors_origins: tuple[str, ...] = ()
    #: ``Host`` values accepted (``*.example.com`` wildcards); ``("*",)`` accepts any.
    allowed_hosts: tuple[str, ...] = ("*",)
    #: How often open WebSockets re-check their credential, and revocations are re-read.
    recheck_seconds: float = 0.5
    #: Wall clock (Unix seconds) for token times; tests pass a fake one.
    clock: Callable[[], float] = time.time
