"""The auditor's API on a real gateway, engine (with its sealer) and nats-server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from chorus.audit.bundle import BundleInvalid, create_signing_key, parse_public_key, verify_bundle
from chorus.audit.ledger import last_seal
from chorus.gateway.app import create_app
from chorus.gateway.state import GatewayConfig
from chorus.store.recorder import open_recorder
from litestar import Litestar

from tests.conftest import ReadStores
from tests.integration.test_gateway_support import (
    SESSIONS,
    UNKNOWN_SESSION,
    assert_problem,
    eventually,
    open_session,
    submit,
)

EVENTS = "/api/v1/events"
AUDIT = "/api/v1/audit"


@pytest.fixture
def read_store_url(read_stores: ReadStores) -> str:
    """Time travel and history on each read-store backend (the past is folded from the
    event store, whichever store serves the present)."""
    return read_stores.url("read")


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


async def finished_session(http: httpx.AsyncClient, gateway: Any) -> str:
    """Opened by ops-1, submitted by a1 and a2: four events (opened, 2 results, finalised)."""
    sid = await open_session(http, gateway.key("ops-1", "operator"), ["a1", "a2"])
    for agent in ("a1", "a2"):
        response = await submit(http, gateway.key(agent), sid, {"by": agent})
        assert response.status_code == 200, response.text
    return sid


async def test_the_global_log_pages_by_position_with_who_why_and_when(http, gateway):
    first = await finished_session(http, gateway)
    second = await finished_session(http, gateway)
    auditor = gateway.key("audrey", "auditor")

    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (await http.get(EVENTS, params={"after": after, "limit": 3}, headers=auditor)).json()
        seen.extend(page["items"])
        after = page["next_after"]
        if not page["more"]:
            break
    assert len(seen) == 8
    positions = [e["position"] for e in seen]
    assert positions == sorted(positions)
    assert [e["aggregate_id"] for e in seen].count(first) == 4
    assert [e["aggregate_id"] for e in seen].count(second) == 4
    opened = seen[0]
    assert opened["actor"] == "ops-1"
    assert opened["command_id"] and opened["correlation_id"]
    assert opened["occurred_at"] and opened["hash"] and opened["prev_hash"] == "0" * 64
    result = seen[1]
    assert result["data"]["result_digest"].startswith("sha256:")

    filtered = await http.get(
        EVENTS, params={"type": "ResultSubmitted", "actor": "a2"}, headers=auditor
    )
    assert [(e["type"], e["actor"]) for e in filtered.json()["items"]] == [
        ("ResultSubmitted", "a2"), ("ResultSubmitted", "a2"),
    ]  # fmt: skip
    windowed = await http.get(
        EVENTS,
        params={"since": seen[4]["occurred_at"], "until": "2999-01-01T00:00:00Z",
                "aggregate": "session"},
        headers=auditor,
    )  # fmt: skip
    assert {e["aggregate_id"] for e in windowed.json()["items"]} == {second}


async def test_the_global_log_streams_as_ndjson_without_a_page_limit(http, gateway):
    for _ in range(3):
        await finished_session(http, gateway)
    auditor = gateway.key("audrey", "auditor")
    async with http.stream(
        "GET", EVENTS, params={"after": 2}, headers={**auditor, "Accept": "application/x-ndjson"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert len(lines) == 11  # 12 events, the first at position 1
    assert all(e["position"] > 2 for e in lines)


async def test_time_travel_rebuilds_the_past_from_history(http, gateway):
    sid = await finished_session(http, gateway)
    auditor = gateway.key("audrey", "auditor")
    history = (await http.get(f"{SESSIONS}/{sid}/events", headers=auditor)).json()["items"]

    at_1 = (await http.get(f"{SESSIONS}/{sid}", params={"at_version": 1}, headers=auditor)).json()
    assert (at_1["status"], at_1["version"], at_1["results"]) == ("open", 1, {})
    assert at_1["pending"] == ["a1", "a2"]
    at_2 = (await http.get(f"{SESSIONS}/{sid}", params={"at_version": 2}, headers=auditor)).json()
    assert list(at_2["results"]) == ["a1"]
    as_of = await http.get(
        f"{SESSIONS}/{sid}", params={"as_of": history[1]["occurred_at"]}, headers=auditor
    )
    assert as_of.json()["version"] >= 2
    current = (await http.get(f"{SESSIONS}/{sid}", headers=auditor)).json()
    latest = (await http.get(f"{SESSIONS}/{sid}", params={"at_version": 4}, headers=auditor)).json()
    assert latest == current

    problems = [
        (await http.get(f"{SESSIONS}/{sid}", params={"at_version": 9}, headers=auditor),
         404, "version_not_found"),
        (await http.get(f"{SESSIONS}/{sid}", params={"as_of": "2000-01-01T00:00:00Z"},
                        headers=auditor), 404, "session_not_found"),
        (await http.get(f"{SESSIONS}/{UNKNOWN_SESSION}", params={"at_version": 1},
                        headers=auditor), 404, "session_not_found"),
        (await http.get(f"{SESSIONS}/{sid}", params={"as_of": "yesterday"}, headers=auditor),
         400, "invalid_parameter"),
        (await http.get(f"{SESSIONS}/{sid}", params={"as_of": "2030-01-01T00:00:00"},
                        headers=auditor), 400, "invalid_parameter"),
        (await http.get(f"{SESSIONS}/{sid}", params={"at_version": 1, "as_of": "2030-01-01Z"},
                        headers=auditor), 400, "invalid_parameter"),
        (await http.get(f"{SESSIONS}/{sid}", params={"at_version": 0}, headers=auditor),
         400, "validation_error"),
    ]  # fmt: skip
    for response, status, code in problems:
        assert_problem(response, status, code)


async def test_workflows_travel_in_time_too(http, gateway):
    ops = gateway.key("ops-1", "operator")
    started = await http.post(
        "/api/v1/workflows", json={"requirements": "r", "workflow_type": "quick"}, headers=ops
    )
    wid = started.json()["workflow_id"]
    auditor = gateway.key("audrey", "auditor")
    past = await http.get(f"/api/v1/workflows/{wid}", params={"at_version": 1}, headers=auditor)
    assert past.status_code == 200, past.text
    assert (past.json()["status"], past.json()["estimated_completion"]) == ("queued", None)


async def test_history_time_travel_export_and_verify_need_auditor_or_admin(http, gateway, tmp_path):
    sid = await finished_session(http, gateway)
    create_signing_key(tmp_path / "audit" / "signing.key")  # as chorus up does
    reads = [
        (EVENTS, {}),
        (f"{SESSIONS}/{sid}/events", {}),
        (f"{SESSIONS}/{sid}", {"at_version": 1}),
        (f"{SESSIONS}/{sid}", {"as_of": "2999-01-01T00:00:00Z"}),
        (f"/api/v1/workflows/{UNKNOWN_SESSION}/events", {}),
        (f"{AUDIT}/export", {"session": sid}),
        (f"{AUDIT}/verify", {}),
        (f"{AUDIT}/public-key", {}),
    ]
    for role in ("agent", "operator"):
        headers = gateway.key(f"some-{role}", role)
        for path, params in reads:
            assert_problem(await http.get(path, params=params, headers=headers), 403, "forbidden")
    for role in ("auditor", "admin"):
        headers = gateway.key(f"some-{role}", role)
        for path, params in reads[:4] + reads[5:]:
            response = await http.get(path, params=params, headers=headers)
            assert response.status_code == 200, (role, path, response.text)
    # The current state stays readable by every role.
    agent = gateway.key("a1")
    assert (await http.get(f"{SESSIONS}/{sid}", headers=agent)).status_code == 200


def post_routes(app: Litestar) -> list[str]:
    paths = []
    for route in app.routes:
        if route.path == "/api/v1/auth/token":  # issues no command: exchanges a credential
            continue
        if "POST" in getattr(route, "methods", set()):
            paths.append(route.path.replace("{session_id:uuid}", UNKNOWN_SESSION)
                         .replace("{workflow_id:uuid}", UNKNOWN_SESSION))  # fmt: skip
    return paths


async def test_an_auditor_cannot_issue_any_command(http, gateway, tmp_path):
    app = create_app(GatewayConfig(nats_url="nats://unused", database_url="sqlite:///unused",
                                   read_store_url="sqlite:///unused", keys_path=str(tmp_path / "k.db")))  # fmt: skip
    paths = post_routes(app)
    assert len(paths) >= 6
    auditor = gateway.key("audrey", "auditor")
    for path in paths:
        response = await http.post(path, json={}, headers=auditor)
        assert_problem(response, 403, "forbidden")


async def test_an_exported_bundle_verifies_offline_and_a_flipped_byte_does_not(
    http, gateway, database_url, tmp_path
):
    sid = await finished_session(http, gateway)
    auditor = gateway.key("audrey", "auditor")
    recorder = open_recorder(database_url)
    head = recorder.max_notification_id()

    async def sealed() -> bool:
        seal = last_seal(recorder)
        return seal is not None and seal.position >= head

    await eventually(sealed, what="the engine sealing the log")
    # The gateway never creates the signing key: without one it answers 503.
    key_path = tmp_path / "audit" / "signing.key"
    for path, params in ((f"{AUDIT}/export", {"session": sid}), (f"{AUDIT}/public-key", {})):
        assert_problem(await http.get(path, params=params, headers=auditor),
                       503, "signing_key_unavailable")  # fmt: skip
    assert not key_path.exists()
    create_signing_key(key_path)
    response = await http.get(f"{AUDIT}/export", params={"session": sid}, headers=auditor)
    assert response.status_code == 200, response.text
    assert "chorus-audit-session" in response.headers["content-disposition"]
    key = (await http.get(f"{AUDIT}/public-key", headers=auditor)).json()["public_key"]
    assert response.headers["chorus-public-key"] == key
    verified = verify_bundle(response.content, parse_public_key(key))
    assert verified.events == 4
    assert verified.manifest.log_seal is not None
    assert verified.manifest.log_seal.position >= head
    flipped = bytearray(response.content)
    flipped[-10] ^= 0x04
    with pytest.raises(BundleInvalid):
        verify_bundle(bytes(flipped), parse_public_key(key))

    report = (await http.get(f"{AUDIT}/verify", headers=auditor)).json()
    assert report["ok"] is True, report
    assert report["sealed_through"] >= head
    ranged = await http.get(f"{AUDIT}/export", params={"since": "2000-01-01T00:00:00Z",
                                                       "until": "2999-01-01T00:00:00Z"},
                            headers=auditor)  # fmt: skip
    assert verify_bundle(ranged.content, parse_public_key(key)).events == 4

    for params, status, code in [
        ({}, 400, "invalid_parameter"),
        ({"session": sid, "workflow": sid}, 400, "invalid_parameter"),
        ({"since": "2000-01-01T00:00:00Z"}, 400, "invalid_parameter"),
        ({"session": UNKNOWN_SESSION}, 404, "session_not_found"),
    ]:
        assert_problem(await http.get(f"{AUDIT}/export", params=params, headers=auditor),
                       status, code)  # fmt: skip
