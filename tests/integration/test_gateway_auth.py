"""API keys, roles and the public endpoints of a real gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.integration.test_gateway_support import (
    SESSIONS,
    assert_problem,
    bearer,
    eventually,
    get_events,
    get_session,
    key_id,
    open_body,
    open_session,
    recv_events,
    submit,
)


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


# Authentication -----------------------------------------------------------------------------


UNKNOWN = "00000000-0000-4000-8000-000000000000"
EVERY_ROUTE = [
    ("GET", SESSIONS),
    ("POST", SESSIONS),
    ("GET", f"{SESSIONS}/{UNKNOWN}"),
    ("GET", f"{SESSIONS}/{UNKNOWN}/events"),
    ("POST", f"{SESSIONS}/{UNKNOWN}/results"),
    ("POST", f"{SESSIONS}/{UNKNOWN}/cancel"),
]


async def test_no_key_gets_401_unauthenticated_with_www_authenticate(http):
    for method, path in EVERY_ROUTE:
        response = await http.request(method, path, json=open_body(["bob"]))

        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer", (method, path)


async def test_authorization_without_a_bearer_key_is_unauthenticated(http):
    for authorization in ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Token chk_abc_def"]:
        response = await http.get(SESSIONS, headers={"Authorization": authorization})
        assert_problem(response, 401, "unauthenticated")


async def test_unknown_key_gets_401_invalid_credentials(http, gateway):
    gateway.key("alice")  # the store has keys; just not these
    for key in ["chk_000000000000_nope", "not-a-key", "chk_only-two", "chk__", "chk_x_y_z"]:
        response = await http.get(SESSIONS, headers={"Authorization": f"Bearer {key}"})

        assert_problem(response, 401, "invalid_credentials")
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', key


async def test_right_key_id_with_a_wrong_secret_is_invalid_credentials(http, gateway):
    real = gateway.key("alice")
    forged = f"chk_{key_id(real)}_{'A' * 43}"

    response = await http.get(SESSIONS, headers={"Authorization": f"Bearer {forged}"})

    assert_problem(response, 401, "invalid_credentials")
    assert (await http.get(SESSIONS, headers=real)).status_code == 200


async def test_bearer_scheme_is_case_insensitive(http, gateway):
    key = bearer(gateway.key("alice"))
    response = await http.get(SESSIONS, headers={"Authorization": f"bearer {key}"})
    assert response.status_code == 200, response.text


async def test_token_query_parameter_is_not_accepted_over_http(http, gateway):
    key = bearer(gateway.key("alice"))
    response = await http.get(SESSIONS, params={"token": key})
    assert_problem(response, 401, "unauthenticated")


async def test_revoked_key_stops_working(http, gateway):
    alice = gateway.key("alice")
    other_alice_key = gateway.key("alice")
    session_id = await open_session(http, alice, ["bob"])
    assert gateway.keys.revoke(key_id(alice)) is True

    async def rejected() -> httpx.Response | None:
        response = await http.get(SESSIONS, headers=alice)
        return response if response.status_code == 401 else None

    # The gateway caches keys for up to 5 s.
    response = await eventually(rejected, timeout=8, interval=0.2, what="the revoked key failing")
    assert_problem(response, 401, "invalid_credentials")
    assert_problem(
        await http.post(SESSIONS, json=open_body(["bob"]), headers=alice),
        401,
        "invalid_credentials",
    )
    with pytest.raises(InvalidStatus):
        async with websockets.connect(
            f"{gateway.ws_url}{SESSIONS}/{session_id}/feed", additional_headers=alice
        ):
            pass
    # The actor's other key is untouched.
    assert (await get_session(http, other_alice_key, session_id))["opened_by"] == "alice"
    assert gateway.keys.revoke(key_id(alice)) is False


# Roles --------------------------------------------------------------------------------------


async def test_auditor_cannot_post_but_can_read(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    auditor = gateway.key("bob", "auditor")  # even as a participant's actor, no writes
    session_id = await open_session(http, owner, ["bob", "carol"])
    assert (await submit(http, bob, session_id)).status_code == 200

    writes = [
        await http.post(SESSIONS, json=open_body(["bob"]), headers=auditor),
        await submit(http, auditor, session_id),
        await http.post(f"{SESSIONS}/{session_id}/cancel", headers=auditor),
    ]
    for response in writes:
        body = assert_problem(response, 403, "forbidden")
        assert "auditor" in body["detail"]

    view = await get_session(http, auditor, session_id)
    assert view["status"] == "open"
    assert list(view["results"]) == ["bob"]
    listed = await http.get(SESSIONS, headers=auditor)
    assert [s["session_id"] for s in listed.json()["items"]] == [session_id]
    assert len(await get_events(http, auditor, session_id)) == 2


async def test_auditor_can_follow_a_feed(engine, projector, gateway, http):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])
    auditor = gateway.key("watcher", "auditor")

    async with websockets.connect(
        f"{gateway.ws_url}{SESSIONS}/{session_id}/feed", additional_headers=auditor
    ) as ws:
        (opened,) = await recv_events(ws, 1)
    assert opened["type"] == "SessionOpened"


async def test_writer_roles_may_open_sessions(http, gateway):
    for role in ["agent", "operator", "admin"]:
        headers = gateway.key(f"writer-{role}", role)
        response = await http.post(SESSIONS, json=open_body(["bob"]), headers=headers)
        assert response.status_code == 201, (role, response.text)


# Public endpoints ---------------------------------------------------------------------------


async def test_health_needs_no_key(http):
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_nats_store_and_projection_lag(http, gateway):
    owner = gateway.key("owner")
    await open_session(http, owner, ["bob"])
    await open_session(http, owner, ["bob"])

    async def caught_up() -> dict[str, Any] | None:
        response = await http.get("/ready")
        assert response.status_code == 200, response.text
        body = response.json()
        return body if body["checks"]["projections"]["sessions"]["lag"] == 0 else None

    body = await eventually(caught_up, what="the projection lag reaching 0")
    assert body["status"] == "ready"
    assert body["checks"]["nats"] is True
    assert body["checks"]["event_store"] is True
    assert body["checks"]["projections"]["sessions"]["position"] >= 2


async def test_schema_pages_need_no_key(http):
    page = await http.get("/schema")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")

    spec = await http.get("/schema/openapi.json")
    assert spec.status_code == 200
    document = spec.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Chorus"
    paths = document["paths"]
    assert "/api/v1/sessions" in paths
    assert {"get", "post"} <= set(paths["/api/v1/sessions"])
    assert any(p.endswith("/results") for p in paths)
    assert "apiKey" in document["components"]["securitySchemes"]
