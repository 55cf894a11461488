"""The hardened HTTP edge of a real gateway: rate limits, quota, headers, CORS, hosts, Origin.

Limits are configured tiny (per minute or hour), so no test waits for a window to pass.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from chorus.gateway.edge import EdgeConfig
from websockets.exceptions import InvalidStatus

from tests.integration.test_gateway_support import (
    SESSIONS,
    assert_problem,
    open_body,
    recv_events,
)

WORKFLOWS = "/api/v1/workflows"
ALLOWED_ORIGIN = "https://console.example.com"


@pytest.fixture
def gateway_edge() -> EdgeConfig:
    return EdgeConfig(
        rate_limits={"workflows": "2/minute", "auth_failures": "3/hour", "public": "5/hour"},
        session_quota=2,
        cors_origins=(ALLOWED_ORIGIN,),
        allowed_hosts=("127.0.0.1", "localhost"),
    )


@pytest.fixture
async def http(gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


# Rate limits --------------------------------------------------------------------------------


async def test_workflow_submissions_are_limited_per_actor_with_retry_after(http, gateway):
    alice, bob = gateway.key("alice"), gateway.key("bob")
    # Bodies are invalid on purpose: a refused call counts all the same, and no engine runs.
    first = await http.post(WORKFLOWS, json={}, headers=alice)
    assert first.status_code == 400
    second = await http.post("/execute-workflow", json={}, headers=alice)  # same class
    assert second.status_code == 400

    refused = await http.post(WORKFLOWS, json={}, headers=alice)

    body = assert_problem(refused, 429, "rate_limited")
    assert "2 workflows calls in 60 s" in body["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-limit"] == "2"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-policy"] == "2;w=60"
    assert 0 <= int(refused.headers["ratelimit-reset"]) <= 60
    # Another actor, and another route class of the same actor, are not affected.
    assert (await http.post(WORKFLOWS, json={}, headers=bob)).status_code == 400
    listed = await http.get(SESSIONS, headers=alice)
    assert listed.status_code == 200
    assert listed.headers["ratelimit-limit"] == "1200"
    assert int(listed.headers["ratelimit-remaining"]) < 1200


async def test_failed_keys_are_limited_per_address_before_any_key_is_checked(http, gateway):
    good = gateway.key("alice")
    for key in ("chk_000000000000_nope", "not-a-key"):
        bad = await http.get(SESSIONS, headers={"Authorization": f"Bearer {key}"})
        assert_problem(bad, 401, "invalid_credentials")
    assert_problem(await http.get(SESSIONS), 401, "unauthenticated")  # no key counts too

    refused = await http.get(SESSIONS, headers=good)

    assert_problem(refused, 429, "rate_limited")
    assert int(refused.headers["retry-after"]) >= 1


async def test_public_paths_are_limited_per_address(http):
    for _ in range(5):
        assert (await http.get("/health")).status_code == 200
    assert_problem(await http.get("/health"), 429, "rate_limited")


async def test_an_agent_may_hold_only_so_many_open_sessions_naming_others(
    engine, projector, http, gateway
):
    farmer = gateway.key("farmer")
    for _ in range(2):
        response = await http.post(SESSIONS, json=open_body(["victim"]), headers=farmer)
        assert response.status_code == 201, response.text

    refused = await http.post(SESSIONS, json=open_body(["victim", "farmer"]), headers=farmer)

    body = assert_problem(refused, 429, "session_quota_exceeded")
    assert body["details"] == {"open": 2, "quota": 2}
    routed = await http.post(SESSIONS, json=open_body([], size=1), headers=farmer)
    assert_problem(routed, 429, "session_quota_exceeded")
    # A session of its own, and an operator's sessions, are not bounded.
    alone = await http.post(SESSIONS, json=open_body(["farmer"]), headers=farmer)
    assert alone.status_code == 201, alone.text
    ops = gateway.key("ops", "operator")
    for _ in range(3):
        response = await http.post(SESSIONS, json=open_body(["victim"]), headers=ops)
        assert response.status_code == 201, response.text


# Headers ------------------------------------------------------------------------------------


def assert_security_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "server" not in headers


async def test_every_api_response_has_security_headers_and_no_store(http, gateway):
    alice = gateway.key("alice")
    responses = [
        await http.get(SESSIONS, headers=alice),  # 200
        await http.get(SESSIONS),  # 401 from the auth middleware
        await http.get("/api/v1/nowhere", headers=alice),  # 404 before routing
        await http.get("/health"),
    ]
    for response in responses:
        assert_security_headers(response)
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")


async def test_the_docs_pages_get_a_csp_that_allows_what_they_load(http):
    for path in ("/schema", "/schema/swagger"):
        page = await http.get(path)
        assert page.status_code == 200
        assert_security_headers(page)
        csp = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        for url in re.findall(r'<script[^>]+src="([^"]+)"', page.text):
            # The renderers' assets ship with the gateway: same origin, 'self'.
            origin = "'self'" if url.startswith("/") else "/".join(url.split("/")[:3])
            assert origin in directives["script-src"], (path, url, csp)
        for url in re.findall(r'<link[^>]+href="(https://[^"]+)"', page.text):
            assert "/".join(url.split("/")[:3]) in directives["style-src"], (path, url, csp)
        if re.search(r"<script>(?!\s*</script>)", page.text):  # inline configuration
            assert "'unsafe-inline'" in directives["script-src"]
        assert "'self'" in directives["connect-src"]  # fetches /schema/openapi.json


# CORS, hosts, Origin ------------------------------------------------------------------------


async def test_cors_answers_only_allowed_origins(http, gateway):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    allowed = await http.options(SESSIONS, headers={"Origin": ALLOWED_ORIGIN, **preflight})
    assert allowed.status_code in (200, 204)
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "access-control-allow-credentials" not in allowed.headers

    other = await http.options(SESSIONS, headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    simple = await http.get(SESSIONS, headers={"Origin": "https://evil.example",
                                               **gateway.key("alice")})  # fmt: skip
    assert "access-control-allow-origin" not in simple.headers


async def test_an_unknown_host_is_refused(http):
    assert (await http.get("/health", headers={"Host": "localhost"})).status_code == 200
    response = await http.get("/health", headers={"Host": "rebound.evil.example"})
    assert_problem(response, 400, "invalid_host")


async def test_a_websocket_from_a_foreign_origin_is_refused(engine, projector, http, gateway):
    owner = gateway.key("owner")
    created = await http.post(SESSIONS, json=open_body(["bob"]), headers=owner)
    url = f"{gateway.ws_url}{SESSIONS}/{created.json()['session_id']}/feed"
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, additional_headers=owner,
                                      origin="https://evil.example"):  # type: ignore[arg-type]  # fmt: skip
            pass
    assert refused.value.response.status_code == 403
    for origin in (ALLOWED_ORIGIN, gateway.url):  # the allow-list, and the same origin
        async with websockets.connect(url, additional_headers=owner, origin=origin) as ws:  # type: ignore[arg-type]
            (opened,) = await recv_events(ws, 1)
            assert opened["type"] == "SessionOpened"


def test_default_edge_is_closed_to_cors_and_open_to_hosts() -> None:
    edge = EdgeConfig()
    assert edge.cors_origins == ()
    assert edge.allowed_hosts == ("*",)
