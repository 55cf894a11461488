"""Every error is an RFC 9457 problem with a stable code and the request id (real gateway)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.test_gateway_support import (
    SESSIONS,
    UNKNOWN_SESSION,
    assert_problem,
    get_events,
    get_session,
    open_body,
    open_session,
    problem_fields,
    submit,
    task,
)


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


# Problem details and request ids ------------------------------------------------------------


async def test_domain_error_is_a_problem_whose_request_id_matches_the_header(http, gateway):
    response = await http.get(f"{SESSIONS}/{UNKNOWN_SESSION}", headers=gateway.key("a"))

    body = assert_problem(response, 404, "session_not_found")
    assert body["title"]
    assert body["type"] == "https://chorus.dev/problems/session_not_found"
    assert body["instance"] == f"{SESSIONS}/{UNKNOWN_SESSION}"
    assert body["request_id"]
    assert response.headers["x-request-id"] == body["request_id"]


async def test_each_request_gets_its_own_request_id(http, gateway):
    headers = gateway.key("a")
    first = await http.get(f"{SESSIONS}/{UNKNOWN_SESSION}", headers=headers)
    second = await http.get(f"{SESSIONS}/{UNKNOWN_SESSION}", headers=headers)

    assert first.json()["request_id"] != second.json()["request_id"]


async def test_client_request_id_is_echoed_on_success_and_on_problems(http, gateway):
    headers = {**gateway.key("a"), "X-Request-Id": "client-chosen-id-1"}
    ok = await http.get(SESSIONS, headers=headers)
    domain = await http.get(f"{SESSIONS}/{UNKNOWN_SESSION}", headers=headers)
    invalid = await http.post(SESSIONS, json={"participants": []}, headers=headers)

    assert ok.status_code == 200
    assert ok.headers["x-request-id"] == "client-chosen-id-1"
    for response in (domain, invalid):
        assert response.headers["x-request-id"] == "client-chosen-id-1"
        assert response.json()["request_id"] == "client-chosen-id-1"


async def test_overlong_client_request_id_is_replaced(http, gateway):
    headers = {**gateway.key("a"), "X-Request-Id": "x" * 129}
    response = await http.get(f"{SESSIONS}/{UNKNOWN_SESSION}", headers=headers)

    rid = response.json()["request_id"]
    assert rid != "x" * 129
    assert response.headers["x-request-id"] == rid


async def test_unauthenticated_problem_carries_the_request_id_header(http):
    response = await http.get(SESSIONS, headers={"X-Request-Id": "rid-401"})

    body = assert_problem(response, 401, "unauthenticated")
    assert body["request_id"] == "rid-401"
    assert response.headers.get("x-request-id") == "rid-401"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/no/such/route", 404), ("DELETE", SESSIONS, 405)],
    ids=["unknown-route", "wrong-method"],
)
async def test_router_problems_echo_the_client_request_id(http, gateway, method, path, status):
    headers = {**gateway.key("a"), "X-Request-Id": "rid-router"}
    response = await http.request(method, path, headers=headers)

    assert response.status_code == status
    assert response.json()["request_id"] == "rid-router"
    assert response.headers.get("x-request-id") == "rid-router"


async def test_unknown_route_is_a_404_problem(http, gateway):
    response = await http.get("/api/v1/nothing-here", headers=gateway.key("a"))
    assert_problem(response, 404, "not_found")


async def test_session_path_that_is_not_a_uuid_is_a_404_problem(http, gateway):
    response = await http.get(f"{SESSIONS}/not-a-uuid", headers=gateway.key("a"))
    assert_problem(response, 404, "not_found")


async def test_wrong_method_is_a_405_problem(http, gateway):
    response = await http.delete(SESSIONS, headers=gateway.key("a"))
    assert_problem(response, 405, "method_not_allowed")


# Request bodies -----------------------------------------------------------------------------


INVALID_OPEN_BODIES = [
    ("unknown field", open_body(["bob"], colour="red"), "colour"),
    ("wrong type", open_body(["bob"], timeout_seconds="ten"), "timeout_seconds"),
    # Participants or a size: a rule over two fields, reported on the body itself.
    ("participants empty", open_body([]), "$"),
    ("timeout 0", open_body(["bob"], timeout_seconds=0), "timeout_seconds"),
    ("timeout 86401", open_body(["bob"], timeout_seconds=86_401), "timeout_seconds"),
    ("participant not a token", open_body(["not.a.token"]), "participants[0]"),
    ("session id not a uuid", open_body(["bob"], session_id="not-a-uuid"), "session_id"),
    ("nested enum", open_body(["bob"], task=task(require="most")), "task.criteria.require"),
    ("empty description", open_body(["bob"], task={"description": ""}), "task.description"),
    ("min_results 0", open_body(["bob"], task=task(min_results=0)), "task.criteria.min_results"),
]


async def test_invalid_open_bodies_are_400s_naming_the_field(http, gateway):
    alice = gateway.key("alice")
    for case, body, field in INVALID_OPEN_BODIES:
        response = await http.post(SESSIONS, json=body, headers=alice)

        problem = assert_problem(response, 400, "validation_error")
        assert field in problem_fields(problem), (case, problem)
        if field == "$":
            assert "participants" in problem["detail"], (case, problem)
    assert (await http.get(SESSIONS, headers=alice)).json()["items"] == []


async def test_nested_unknown_field_is_named_with_its_path(http, gateway):
    body = open_body(["bob"], task={"description": "x", "criteria": {"bogus": 1}})
    response = await http.post(SESSIONS, json=body, headers=gateway.key("alice"))

    problem = assert_problem(response, 400, "validation_error")
    assert problem_fields(problem) == ["task.criteria.bogus"]


INVALID_RESULT_BODIES = [
    ("result not an object", {"result": []}, "result"),
    ("success not a bool", {"result": {}, "success": "yes"}, "success"),
    ("agent_id is not a field", {"result": {}, "agent_id": "bob"}, "agent_id"),
    ("output_hash too long", {"result": {}, "output_hash": "h" * 201}, "output_hash"),
]


async def test_invalid_result_bodies_are_400s_naming_the_field(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    session_id = await open_session(http, owner, ["bob"])

    for case, body, field in INVALID_RESULT_BODIES:
        response = await http.post(f"{SESSIONS}/{session_id}/results", json=body, headers=bob)

        problem = assert_problem(response, 400, "validation_error")
        assert field in problem_fields(problem), (case, problem)
    assert (await get_session(http, owner, session_id))["results"] == {}


@pytest.mark.parametrize("endpoint", ["open", "results"])
async def test_missing_required_field_is_named(http, gateway, endpoint):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    if endpoint == "open":
        path, body, field = SESSIONS, {"participants": ["bob"]}, "task"
    else:
        session_id = await open_session(http, owner, ["bob"])
        path, body, field = f"{SESSIONS}/{session_id}/results", {"success": True}, "result"

    response = await http.post(path, json=body, headers=bob)

    problem = assert_problem(response, 400, "validation_error")
    assert problem_fields(problem) == [field]


async def test_empty_cancel_reason_is_a_400(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])

    response = await http.post(
        f"{SESSIONS}/{session_id}/cancel", json={"reason": ""}, headers=owner
    )

    problem = assert_problem(response, 400, "validation_error")
    assert "reason" in problem_fields(problem)
    assert (await get_session(http, owner, session_id))["status"] == "open"


async def test_duplicate_participants_are_rejected_by_the_engine_as_400(http, gateway):
    response = await http.post(SESSIONS, json=open_body(["bob", "bob"]), headers=gateway.key("a"))

    problem = assert_problem(response, 400, "invalid_command")
    assert problem["details"]["duplicates"] == ["bob"]


async def test_min_results_above_participant_count_is_invalid_criteria(http, gateway):
    body = open_body(["bob"], task=task(min_results=2))
    response = await http.post(SESSIONS, json=body, headers=gateway.key("a"))

    assert_problem(response, 400, "invalid_criteria")


async def test_body_over_the_limit_is_413_body_too_large(http, gateway):
    alice = gateway.key("alice")
    body = open_body(["bob"], task=task("x" * (65 * 1024)))

    response = await http.post(SESSIONS, json=body, headers=alice)

    assert_problem(response, 413, "body_too_large")
    assert response.headers["x-request-id"] == response.json()["request_id"]
    assert (await http.get(SESSIONS, headers=alice)).json()["items"] == []


async def test_body_just_under_the_limit_is_accepted(http, gateway):
    # 10,000 characters is the description's own limit; the whole body stays under 64 KiB.
    body = open_body(["bob"], task=task("x" * 10_000))
    response = await http.post(SESSIONS, json=body, headers=gateway.key("alice"))
    assert response.status_code == 201, response.text


async def test_malformed_json_is_a_400_problem(http, gateway):
    headers = {**gateway.key("alice"), "Content-Type": "application/json"}
    for raw in [b"{not json", b'{"participants": ["bob"],', b"\xff\xfe", b"nul"]:
        response = await http.post(SESSIONS, content=raw, headers=headers)

        assert response.status_code == 400, (raw, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] in {"bad_request", "validation_error"}
        assert response.headers["x-request-id"] == response.json()["request_id"]
    assert (await http.get(SESSIONS, headers=headers)).json()["items"] == []


async def test_missing_body_is_a_400_problem(http, gateway):
    response = await http.post(SESSIONS, headers=gateway.key("alice"))

    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_overlong_idempotency_key_is_a_400(http, gateway):
    headers = {**gateway.key("alice"), "Idempotency-Key": "k" * 201}
    response = await http.post(SESSIONS, json=open_body(["bob"]), headers=headers)

    assert_problem(response, 400, "invalid_idempotency_key")


async def test_idempotency_key_reused_for_another_request_is_not_reported_as_success(http, gateway):
    alice = {**gateway.key("alice"), "Idempotency-Key": "reused"}
    session_id = await open_session(http, alice, ["alice", "bob"])

    response = await submit(http, alice, session_id, {"n": 1})

    recorded = [
        e["type"] for e in await get_events(http, gateway.key("auditor-1", "auditor"), session_id)
    ]
    # Either the result is recorded, or the client is told it was not (a 4xx problem).
    assert recorded == ["SessionOpened", "ResultSubmitted"] or response.status_code >= 400, (
        response.status_code,
        response.text,
        recorded,
    )


# Query parameters ---------------------------------------------------------------------------


async def test_bad_status_filter_is_invalid_parameter_listing_allowed_values(http, gateway):
    response = await http.get(SESSIONS, params={"status": "closed"}, headers=gateway.key("a"))

    problem = assert_problem(response, 400, "invalid_parameter")
    allowed = ["open", "succeeded", "failed", "timed_out", "cancelled"]
    assert problem["details"] == {"field": "status", "allowed": allowed}
    for status in allowed:
        assert status in problem["detail"]


async def test_limit_out_of_range_is_a_400(http, gateway):
    headers = gateway.key("a")
    for limit in ["0", "501", "-1", "many"]:
        response = await http.get(SESSIONS, params={"limit": limit}, headers=headers)

        problem = assert_problem(response, 400, "validation_error")
        assert problem_fields(problem) == ["limit"], (limit, problem)
    for limit in ["1", "500"]:
        response = await http.get(SESSIONS, params={"limit": limit}, headers=headers)
        assert response.status_code == 200, (limit, response.text)


GARBAGE_CURSORS = [
    "garbage!",
    "%%%",
    base64.urlsafe_b64encode(b"x:12").decode(),  # not our prefix
    base64.urlsafe_b64encode(b"s:twelve").decode(),  # not a number
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
]


async def test_garbage_cursor_is_400_invalid_cursor(http, gateway):
    headers = gateway.key("a")
    await open_session(http, headers, ["bob"])
    for cursor in GARBAGE_CURSORS:
        response = await http.get(SESSIONS, params={"cursor": cursor}, headers=headers)
        assert_problem(response, 400, "invalid_cursor")


async def test_cursor_with_an_out_of_range_number_is_400_invalid_cursor(http, gateway):
    cursor = base64.urlsafe_b64encode(b"s:" + b"9" * 30).decode().rstrip("=")
    response = await http.get(SESSIONS, params={"cursor": cursor}, headers=gateway.key("a"))
    assert_problem(response, 400, "invalid_cursor")


async def test_negative_after_version_is_a_400(http, gateway):
    owner = gateway.key("owner")
    session_id = await open_session(http, owner, ["bob"])
    response = await http.get(
        f"{SESSIONS}/{session_id}/events",
        params={"after_version": -1},
        headers=gateway.key("auditor-1", "auditor"),
    )
    assert_problem(response, 400, "validation_error")


async def test_events_of_unknown_session_are_404_whatever_the_page(http, gateway):
    response = await http.get(
        f"{SESSIONS}/{UNKNOWN_SESSION}/events",
        params={"after_version": 1},
        headers=gateway.key("auditor-1", "auditor"),
    )
    assert_problem(response, 404, "session_not_found")
