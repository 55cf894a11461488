"""Pure parts of the HTTP edge: token rules, limit settings, header values, file modes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from chorus.gateway.edge import EdgeConfig
from chorus.gateway.headers import docs_csp
from chorus.gateway.jwt_tokens import InvalidToken, Tokens, load_secret
from chorus.gateway.keys import Principal
from chorus.gateway.ratelimit import Decision, RateLimiter, route_class
from chorus.permissions import tighten
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

NOW = 1_900_000_000.0
SECRET = b"s" * 64


def tokens(**config: object) -> Tokens:
    return Tokens(EdgeConfig(clock=lambda: NOW, **config), SECRET)  # type: ignore[arg-type]


async def test_an_issued_token_verifies_to_the_same_principal_until_it_expires() -> None:
    alice = Principal(actor="alice", role="operator", key_id="k1")
    token, expires = tokens(jwt_ttl_seconds=60).issue(alice)

    principal = await tokens().verify(token)

    assert (principal.actor, principal.role, principal.key_id, principal.via) == (
        "alice", "operator", "k1", "jwt",
    )  # fmt: skip
    assert expires == NOW + 60
    later = Tokens(EdgeConfig(clock=lambda: NOW + 60 + 31), SECRET)  # past the 30 s leeway
    with pytest.raises(InvalidToken, match="expired"):
        await later.verify(token)


async def test_an_hs256_token_signed_with_the_jwks_public_key_is_refused(tmp_path: Path) -> None:
    """Algorithm confusion: the public key is no HMAC secret here."""
    key = generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k", "alg": "RS256"}]}))
    verifier = tokens(jwt_jwks=str(jwks))
    claims = {"iss": "chorus", "aud": "chorus", "sub": "eve", "role": "admin", "exp": NOW + 60}
    assert (
        await verifier.verify(jwt.encode(claims, key, "RS256", headers={"kid": "k"}))
    ).role == "admin"

    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    forged = hs256_by_hand(claims, pem)
    with pytest.raises(InvalidToken):
        await verifier.verify(forged)


def hs256_by_hand(claims: dict[str, object], key: bytes) -> str:
    """PyJWT refuses to sign HS256 with a PEM key; an attacker does not."""
    header = {"alg": "HS256", "typ": "JWT", "kid": "k"}
    signing = b".".join(base64url(json.dumps(part).encode()) for part in (header, claims))
    return (signing + b"." + base64url(hmac.new(key, signing, hashlib.sha256).digest())).decode()


def base64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def test_the_secret_file_is_made_once_owner_only(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.db")
    first = load_secret(EdgeConfig(), keys)
    again = load_secret(EdgeConfig(), keys)

    assert first == again and len(first) == 64
    assert stat.S_IMODE((tmp_path / "jwt.secret").stat().st_mode) == 0o600
    assert load_secret(EdgeConfig(jwt_secret="x" * 40), keys) == b"x" * 40


def test_rate_limit_settings_name_known_classes_and_valid_limits() -> None:
    RateLimiter({"workflows": "10/minute", "feed": "off"})
    with pytest.raises(ValueError, match="unknown rate limit class workflow"):
        RateLimiter({"workflow": "10/minute"})
    with pytest.raises(ValueError, match="workflows"):
        RateLimiter({"workflows": "ten a minute"})


async def test_the_limit_counts_per_identity_and_class() -> None:
    limiter = RateLimiter({"workflows": "2/hour", "write": "off"})
    results = [await limiter.hit("workflows", "actor:a") for _ in range(3)]
    assert [d.allowed for d in results if d] == [True, True, False]
    assert results[2] is not None and results[2].remaining == 0
    assert (await limiter.hit("workflows", "actor:b")) is not None
    assert await limiter.hit("write", "actor:a") is None  # off
    assert await limiter.exhausted("workflows", "actor:a") is not None
    assert await limiter.exhausted("workflows", "actor:b") is None


def test_a_refusal_says_when_to_retry() -> None:
    headers = Decision(allowed=False, limit=10, remaining=0, reset=0, window=60).headers()
    assert headers == {"RateLimit-Limit": "10", "RateLimit-Remaining": "0",
                       "RateLimit-Reset": "0", "RateLimit-Policy": "10;w=60",
                       "Retry-After": "1"}  # fmt: skip
    assert "Retry-After" not in Decision(True, 10, 9, 60, 60).headers()


def test_route_classes() -> None:
    def scope(method: str, path: str, kind: str = "http") -> dict[str, str]:
        return {"type": kind, "method": method, "path": path}

    assert route_class(scope("POST", "/api/v1/workflows")) == "workflows"  # type: ignore[arg-type]
    assert route_class(scope("POST", "/execute-workflow")) == "workflows"  # type: ignore[arg-type]
    assert route_class(scope("POST", "/api/v1/workflows/x/cancel")) == "write"  # type: ignore[arg-type]
    assert route_class(scope("GET", "/api/v1/workflows")) == "read"  # type: ignore[arg-type]
    assert route_class(scope("GET", "/x", "websocket")) == "feed"  # type: ignore[arg-type]


def test_docs_csp_names_the_renderers_origins() -> None:
    class Plugin:
        js_url = "https://cdn.example/x.js"
        css_url = "/static/x.css"

    csp = docs_csp([Plugin()])  # type: ignore[list-item]
    assert "script-src 'self' 'unsafe-inline' https://cdn.example;" in csp
    assert "frame-ancestors 'none'" in csp


def test_chorus_creates_owner_only_files(tmp_path: Path) -> None:
    """The CLI's umask reaches everything it creates (a key store here)."""
    data = tmp_path / "data"
    subprocess.run(
        [sys.executable, "-m", "chorus.cli", "keys", "create", "--actor", "a", "--role", "agent",
         "--data-dir", str(data), "--init"],
        check=True, capture_output=True, env={**os.environ, "CHORUS_DATA_DIR": str(data)},
    )  # fmt: skip
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [data, *data.rglob("*")]}
    assert modes["data"] == 0o700
    assert modes["keys.db"] == 0o600
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


def test_tighten_takes_group_and_other_bits_off_a_tree(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o755)
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "d" / "f").chmod(0o644)
    tighten(tmp_path / "d")
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "d" / "f").stat().st_mode) == 0o600
