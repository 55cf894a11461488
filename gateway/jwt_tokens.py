"""JWT bearer tokens beside API keys (PyJWT), and ``POST /api/v1/auth/token``.

Two kinds of token are accepted:

- **Ours**, HS256 with the gateway's secret, issued by exchanging an API key: short-lived,
  carrying the key's id (``kid`` claim), so revoking the key ends every token made from it.
  Browsers and WebSockets then never hold the long-lived key.
- **An identity provider's**, RS256 / ES256 / EdDSA, verified against a JWKS (a file or an
  https URL, fetched and cached by PyJWT's ``PyJWKClient``).

Both must name our ``iss`` and ``aud`` and carry ``sub`` (the actor, a subject token), a
``role`` claim (one of the roles) and ``exp``. The algorithm is chosen by where the key
comes from, never by the token alone: an HS256 token is checked only with the secret, an
asymmetric one only with the JWKS key of its ``kid`` and that key's own algorithm, and
``none`` is never accepted. ``exp``, ``nbf`` and ``iat`` are checked against the injected
clock with a small leeway (PyJWT reads the real clock, so its own time checks are off).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from pathlib import Path
from typing import Any

import jwt
from chorus.contracts.subjects import is_token
from chorus.gateway.edge import EdgeConfig
from chorus.gateway.errors import Problem
from chorus.gateway.keys import ROLES, Principal
from litestar import Request, post
from litestar.di import NamedDependency
from msgspec import Struct

HS256 = "HS256"
ASYMMETRIC = frozenset({"RS256", "ES256", "EdDSA"})
REQUIRED = ["exp", "sub", "iss", "aud"]


class InvalidToken(Exception):
    """Why a token was refused (the message goes into the 401's detail)."""


def load_secret(config: EdgeConfig, keys_path: str) -> bytes:
    """The configured secret, else the one kept beside the key store (made on first use).

    ``O_EXCL`` makes two gateways starting on one data directory agree on one secret.
    """
    if config.jwt_secret:
        return config.jwt_secret.encode()
    path = Path(config.jwt_secret_path or Path(keys_path).parent / "jwt.secret")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise ValueError(f"{path} holds fewer than 32 characters; delete it to get a new one")
    return secret.encode()


def _jwk_source(spec: str | None) -> jwt.PyJWKClient | jwt.PyJWKSet | None:
    if not spec:
        return None
    if spec.startswith(("https://", "http://")):
        return jwt.PyJWKClient(spec, cache_keys=True, lifespan=300, timeout=5)
    return jwt.PyJWKSet.from_json(Path(spec).read_text())


class Tokens:
    """Issues our tokens and verifies ours and the identity provider's."""

    def __init__(self, config: EdgeConfig, secret: bytes) -> None:
        self.config = config
        self.secret = secret
        self.jwks = _jwk_source(config.jwt_jwks)

    def issue(self, principal: Principal) -> tuple[str, float]:
        """A token for an API key's principal, and when it expires (Unix time)."""
        now = int(self.config.clock())
        expires = now + self.config.jwt_ttl_seconds
        claims = {
            "iss": self.config.jwt_issuer, "aud": self.config.jwt_audience,
            "sub": principal.actor, "role": principal.role, "kid": principal.key_id,
            "iat": now, "nbf": now, "exp": expires, "jti": uuid.uuid4().hex,
        }  # fmt: skip
        return jwt.encode(claims, self.secret, algorithm=HS256), float(expires)

    async def verify(self, token: str) -> Principal:
        """The token's principal, or :class:`InvalidToken` saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidToken("the token is not a JWT") from error
        alg = header.get("alg")
        if alg == HS256:
            key: Any = self.secret
        elif alg in ASYMMETRIC and self.jwks is not None:
            key = await self._jwk(token, header)
        else:
            raise InvalidToken(f"tokens signed with {alg!r} are not accepted here")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self.config.jwt_audience,
                issuer=self.config.jwt_issuer,
                options={"require": REQUIRED, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False},
            )  # fmt: skip
        except jwt.PyJWTError as error:
            raise InvalidToken(f"the token does not verify: {error}") from error
        return self._principal(claims)

    async def _jwk(self, token: str, header: dict[str, Any]) -> Any:
        try:
            if isinstance(self.jwks, jwt.PyJWKClient):
                jwk = await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, token)
            else:
                assert self.jwks is not None
                jwk = self.jwks[str(header.get("kid"))]
        except (jwt.PyJWTError, KeyError) as error:
            raise InvalidToken("no key in the JWKS matches the token's kid") from error
        if jwk.algorithm_name != header.get("alg"):
            raise InvalidToken("the token's alg is not its key's algorithm")
        return jwk.key

    def _principal(self, claims: dict[str, Any]) -> Principal:
        now, leeway = self.config.clock(), self.config.jwt_leeway_seconds
        exp = claims["exp"]
        if not isinstance(exp, int | float) or now > exp + leeway:
            raise InvalidToken("the token has expired")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and (not isinstance(value, int | float) or value > now + leeway):
                raise InvalidToken(f"the token is not valid yet ({name})")
        actor, role, kid = claims["sub"], claims.get("role"), claims.get("kid", "")
        if not isinstance(actor, str) or not is_token(actor):
            raise InvalidToken("sub must be an actor id (letters, digits, _ - : @)")
        if role not in ROLES:
            raise InvalidToken(f"the role claim must be one of {', '.join(ROLES)}")
        if not isinstance(kid, str):
            raise InvalidToken("kid must be a string")
        return Principal(actor=actor, role=str(role), key_id=kid, via="jwt",
                         expires_at=float(exp) + leeway)  # fmt: skip


#: How handlers ask for the token service (an explicit named dependency).
TokensDep = NamedDependency[Tokens]


class IssuedToken(Struct, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int
    expires_at: float
    actor: str
    role: str


@post("/api/v1/auth/token", status_code=200, summary="Exchange an API key for a short-lived JWT",
      tags=["auth"])  # fmt: skip
async def issue_token(request: Request[Principal, Any, Any], tokens: TokensDep) -> IssuedToken:
    """Send the API key as the bearer; the answer's token works wherever the key did, until
    it expires or the key is revoked. A token cannot be exchanged for another."""
    principal = request.user
    if principal.via != "key":
        raise Problem(403, "api_key_required", "only an API key can be exchanged for a token")
    token, expires_at = tokens.issue(principal)
    return IssuedToken(
        access_token=token, token_type="Bearer",  # noqa: S106 (the scheme)
        expires_in=tokens.config.jwt_ttl_seconds,
        expires_at=expires_at, actor=principal.actor, role=principal.role,
    )  # fmt: skip
