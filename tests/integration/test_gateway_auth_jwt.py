"""JWTs beside API keys, and WebSockets that re-check their credential, on a real gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from chorus.gateway.edge import EdgeConfig
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.test_gateway_support import (
    SESSIONS,
    assert_problem,
    bearer,
    key_id,
    open_session,
    recv_events,
)

TOKEN = "/api/v1/auth/token"
START = 1_900_000_000.0  # a fixed "now": nothing here depends on today's date


class Clock:
    """The gateway's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def idp_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def gateway_edge(clock: Clock, idp_key: Ed25519PrivateKey, tmp_path: Path) -> EdgeConfig:
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(idp_key.public_key()))
    jwks = tmp_path / "idp-jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "idp-1", "alg": "EdDSA", "use": "sig"}]}))
    return EdgeConfig(clock=clock, jwt_ttl_seconds=300, jwt_leeway_seconds=5,
                      jwt_jwks=str(jwks), recheck_seconds=0.2)  # fmt: skip


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


async def exchange(http: httpx.AsyncClient, key_headers: dict[str, str]) -> str:
    response = await http.post(TOKEN, headers=key_headers)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def secret_of(tmp_path: Path) -> bytes:
    return (tmp_path / "jwt.secret").read_text().strip().encode()


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"iss": "chorus", "aud": "chorus", "sub": "alice", "role": "operator",
            "iat": int(START), "nbf": int(START), "exp": int(START) + 60}  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# Exchange and use ---------------------------------------------------------------------------


async def test_an_api_key_is_exchanged_for_a_short_lived_token_that_acts_as_its_actor(
    http, gateway, tmp_path
):
    alice = gateway.key("alice", "operator")
    response = await http.post(TOKEN, headers=alice)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["expires_at"] == START + 300
    assert (body["actor"], body["role"]) == ("alice", "operator")
    token_claims = jwt.decode(body["access_token"], secret_of(tmp_path), algorithms=["HS256"],
                              audience="chorus", options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})  # fmt: skip
    assert token_claims["sub"] == "alice"
    assert token_claims["role"] == "operator"
    assert token_claims["kid"] == key_id(alice)
    assert token_claims["exp"] - token_claims["iat"] == 300

    token = auth(body["access_token"])
    session_id = await open_session(http, token, ["bob"])
    view = await http.get(f"{SESSIONS}/{session_id}", headers=token)
    assert view.json()["opened_by"] == "alice"


async def test_a_token_cannot_be_exchanged_for_another(http, gateway):
    token = await exchange(http, gateway.key("alice"))
    assert_problem(await http.post(TOKEN, headers=auth(token)), 403, "api_key_required")


async def test_the_token_endpoint_needs_a_credential(http):
    assert_problem(await http.post(TOKEN), 401, "unauthenticated")


async def test_a_token_from_an_auditor_key_is_still_only_an_auditor(http, gateway):
    token = auth(await exchange(http, gateway.key("audrey", "auditor")))
    assert (await http.get(SESSIONS, headers=token)).status_code == 200
    body = {"participants": ["bob"], "task": {"description": "x"}}
    assert_problem(await http.post(SESSIONS, json=body, headers=token), 403, "forbidden")


# Refused tokens -----------------------------------------------------------------------------


async def test_tokens_that_do_not_verify_are_invalid_credentials(http, gateway, tmp_path):
    gateway.key("someone")  # the secret exists once the gateway started
    secret = secret_of(tmp_path)
    bad = {
        "wrong secret": jwt.encode(claims(), "x" * 64, algorithm="HS256"),
        "wrong audience": jwt.encode(claims(aud="other"), secret, algorithm="HS256"),
        "wrong issuer": jwt.encode(claims(iss="other"), secret, algorithm="HS256"),
        "no exp": jwt.encode(claims(exp=None), secret, algorithm="HS256"),
        "expired": jwt.encode(claims(exp=int(START) - 10), secret, algorithm="HS256"),
        "not yet valid": jwt.encode(claims(nbf=int(START) + 60), secret, algorithm="HS256"),
        "unknown role": jwt.encode(claims(role="root"), secret, algorithm="HS256"),
        "actor not a token": jwt.encode(claims(sub="a b"), secret, algorithm="HS256"),
        "alg none": jwt.encode(claims(), None, algorithm="none"),
        "garbage": "aaa.bbb.ccc",
    }
    for why, token in bad.items():
        response = await http.get(SESSIONS, headers=auth(token))
        assert response.status_code == 401, (why, response.text)
        assert_problem(response, 401, "invalid_credentials")
    # Within the leeway either side, a token is still good.
    skewed = jwt.encode(claims(exp=int(START) - 4, nbf=int(START) + 4), secret, algorithm="HS256")
    assert (await http.get(SESSIONS, headers=auth(skewed))).status_code == 200


async def test_an_issued_token_stops_working_when_it_expires(http, gateway, clock):
    token = auth(await exchange(http, gateway.key("alice")))
    assert (await http.get(SESSIONS, headers=token)).status_code == 200

    clock.now += 300 + 5 + 1  # past exp and the leeway

    body = assert_problem(await http.get(SESSIONS, headers=token), 401, "invalid_credentials")
    assert "expired" in body["detail"]


async def test_tokens_made_from_a_revoked_key_stop_working(http, gateway):
    alice = gateway.key("alice")
    other_alice = gateway.key("alice")
    token = auth(await exchange(http, alice))
    kept = auth(await exchange(http, other_alice))
    assert gateway.keys.revoke(key_id(alice))

    async def refused() -> bool:
        return (await http.get(SESSIONS, headers=token)).status_code == 401

    for _ in range(200):  # the revocation is re-read every 0.2 s here
        if await refused():
            break
        await asyncio.sleep(0.05)
    body = assert_problem(await http.get(SESSIONS, headers=token), 401, "invalid_credentials")
    assert "revoked" in body["detail"]
    assert (await http.get(SESSIONS, headers=kept)).status_code == 200


async def test_an_identity_providers_eddsa_token_is_accepted_and_a_forged_one_is_not(
    http, gateway, idp_key
):
    gateway.key("someone")
    token = jwt.encode(claims(sub="idp-user", role="auditor"), idp_key, algorithm="EdDSA",
                       headers={"kid": "idp-1"})  # fmt: skip
    assert (await http.get(SESSIONS, headers=auth(token))).status_code == 200
    forged = jwt.encode(claims(sub="idp-user", role="admin"), Ed25519PrivateKey.generate(),
                        algorithm="EdDSA", headers={"kid": "idp-1"})  # fmt: skip
    assert_problem(await http.get(SESSIONS, headers=auth(forged)), 401, "invalid_credentials")
    unknown_kid = jwt.encode(claims(), idp_key, algorithm="EdDSA", headers={"kid": "idp-9"})
    assert_problem(await http.get(SESSIONS, headers=auth(unknown_kid)), 401,
                   "invalid_credentials")  # fmt: skip
    # The identity provider's token cannot be exchanged for one of ours either.
    assert_problem(await http.post(TOKEN, headers=auth(token)), 403, "api_key_required")


# WebSockets ---------------------------------------------------------------------------------


def feed(gateway: Any, session_id: str, query: str = "") -> str:
    return f"{gateway.ws_url}{SESSIONS}/{session_id}/feed{query}"


async def test_a_browser_passes_its_token_as_query_or_subprotocol(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])
    token = await exchange(http, owner)

    async with websockets.connect(feed(gateway, session_id, f"?token={token}")) as ws:
        (opened,) = await recv_events(ws, 1)
        assert opened["type"] == "SessionOpened"
    async with websockets.connect(
        feed(gateway, session_id), subprotocols=["chorus.v1", f"chorus.bearer.{token}"]
    ) as ws:
        assert ws.subprotocol == "chorus.v1"  # never the token
        (opened,) = await recv_events(ws, 1)
        assert opened["type"] == "SessionOpened"
    with pytest.raises(InvalidStatus):
        async with websockets.connect(feed(gateway, session_id, "?token=chk_0_nope")):
            pass


async def test_revoking_a_key_closes_its_open_feed_within_5_seconds(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])
    token = await exchange(http, owner)
    async with (
        websockets.connect(feed(gateway, session_id), additional_headers=owner) as by_key,
        websockets.connect(feed(gateway, session_id, f"?token={token}")) as by_token,
    ):
        for ws in (by_key, by_token):
            await recv_events(ws, 1)
        assert gateway.keys.revoke(key_id(owner))

        for ws in (by_key, by_token):
            error = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert error == {"type": "error", "code": "credential_revoked",
                             "message": "the credential of this socket is no longer valid"}  # fmt: skip
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                4401,
                "credential_revoked",
            )


async def test_a_feed_opened_with_a_token_closes_when_the_token_expires(http, gateway, clock):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])
    token = await exchange(http, owner)
    async with websockets.connect(feed(gateway, session_id, f"?token={token}")) as ws:
        await recv_events(ws, 1)
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "pong"  # still fine before expiry

        clock.now += 300 + 5 + 1

        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error["code"] == "credential_expired"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "credential_expired")


async def test_an_open_feed_of_another_key_of_the_actor_stays_open(http, gateway):
    owner, spare = gateway.key("owner"), gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])
    async with websockets.connect(feed(gateway, session_id), additional_headers=spare) as ws:
        await recv_events(ws, 1)
        assert gateway.keys.revoke(key_id(owner))
        await asyncio.sleep(1)  # five re-checks; nothing may close this one
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "pong"
    assert bearer(spare) != bearer(owner)
