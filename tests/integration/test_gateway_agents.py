"""Agents over HTTP against a real gateway, engine, projector, nats-server and SQLite stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from chorus.contracts.agents import agent_uuid
from chorus.engine.domain.evidence import result_hash

from tests.conftest import ReadStores
from tests.integration.test_bus import send
from tests.integration.test_gateway_support import (
    assert_problem,
    eventually,
    open_session,
    problem_fields,
    submit,
)

AGENTS = "/api/v1/agents"


@pytest.fixture
def read_store_url(read_stores: ReadStores) -> str:
    """The gateway's read queries, on each read-store backend."""
    return read_stores.url("read")


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


async def register(
    http: httpx.AsyncClient, headers: dict[str, str], name: str, **fields: Any
) -> httpx.Response:
    body = {"name": name, "type": "worker", "capabilities": ["python"], **fields}
    return await http.post(AGENTS, json=body, headers=headers)


async def registered(
    http: httpx.AsyncClient, headers: dict[str, str], name: str, **fields: Any
) -> dict[str, Any]:
    response = await register(http, headers, name, **fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def get_agent(http: httpx.AsyncClient, headers: dict[str, str], name: str) -> dict[str, Any]:
    response = await http.get(f"{AGENTS}/{name}", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def now() -> str:
    return datetime.now(UTC).isoformat()


async def verify(
    http: httpx.AsyncClient, headers: dict[str, str], name: str, **body: Any
) -> httpx.Response:
    return await http.post(f"{AGENTS}/{name}/verify-completion", json=body, headers=headers)


# Registering ----------------------------------------------------------------------------------


async def test_register_is_201_then_200_for_the_owner_and_409_for_anyone_else(http, gateway):
    owner = gateway.key("ops-1", "operator")
    first = await register(http, owner, "a1", metadata={"zone": "eu"})

    assert first.status_code == 201, first.text
    assert first.headers["location"] == f"{AGENTS}/a1"
    body = first.json()
    assert body["agent_id"] == "a1"
    assert body["uuid"] == str(agent_uuid("a1"))
    assert body["owner"] == "ops-1"  # from the key, never from the body
    assert body["status"] == "online"
    assert body["type"] == "worker"
    assert body["capabilities"] == ["python"]
    assert body["metadata"] == {"zone": "eu"}
    assert body["total_tasks"] == 0
    assert body["avg_success_rate"] is None
    assert body["reliability_score"] == 0.5
    assert body["version"] == 1

    again = await register(http, owner, "a1", metadata={"zone": "eu"})
    assert again.status_code == 200, again.text
    assert again.json()["version"] == 1

    more = await register(http, owner, "a1", capabilities=["python", "sql"])
    assert more.status_code == 200, more.text
    assert more.json()["capabilities"] == ["python", "sql"]
    assert more.json()["version"] == 2

    taken = await register(http, gateway.key("mallory"), "a1")
    assert_problem(taken, 409, "agent_name_taken")
    assert (await get_agent(http, owner, "a1"))["owner"] == "ops-1"


async def test_register_with_an_idempotency_key_replays_without_recording_again(http, gateway):
    headers = {**gateway.key("a1"), "Idempotency-Key": "reg-1"}
    first = await register(http, headers, "a1")
    second = await register(http, headers, "a1")

    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert second.status_code == 200, second.text
    assert second.headers["idempotent-replayed"] == "true"
    auditor = gateway.key("audit", "auditor")
    events = (await http.get(f"{AGENTS}/a1/events", headers=auditor)).json()["items"]
    assert [e["type"] for e in events] == ["AgentRegistered"]


async def test_register_validates_the_body_and_the_role(http, gateway):
    agent = gateway.key("a1")
    for body, field in (
        ({"type": "worker"}, "name"),
        ({"name": "a.b"}, "name"),
        ({"name": "a1", "owner": "mallory"}, "owner"),
        ({"name": "a1", "capabilities": ["no spaces"]}, "capabilities[0]"),
    ):
        response = await http.post(AGENTS, json=body, headers=agent)
        problem = assert_problem(response, 400, "validation_error")
        assert problem_fields(problem) == [field], problem
    auditor = gateway.key("aud", "auditor")
    assert_problem(await register(http, auditor, "a2"), 403, "forbidden")
    assert_problem(await register(http, {}, "a2"), 401, "unauthenticated")


# Capabilities, retirement ----------------------------------------------------------------------


async def test_capabilities_are_replaced_by_the_agent_or_its_owner_only(http, gateway):
    owner = gateway.key("ops-1", "operator")
    await registered(http, owner, "a1")

    by_owner = await http.put(
        f"{AGENTS}/a1/capabilities", json={"capabilities": ["sql", "go"]}, headers=owner
    )
    assert by_owner.status_code == 200, by_owner.text
    assert by_owner.json()["capabilities"] == ["go", "sql"]
    by_agent = await http.put(
        f"{AGENTS}/a1/capabilities", json={"capabilities": ["go"]}, headers=gateway.key("a1")
    )
    assert by_agent.status_code == 200, by_agent.text
    assert (await get_agent(http, owner, "a1"))["capabilities"] == ["go"]

    stranger = await http.put(
        f"{AGENTS}/a1/capabilities", json={"capabilities": []}, headers=gateway.key("a2")
    )
    assert_problem(stranger, 403, "not_authorized")
    unknown = await http.put(
        f"{AGENTS}/ghost/capabilities", json={"capabilities": []}, headers=owner
    )
    assert_problem(unknown, 404, "agent_not_found")
    missing = await http.put(f"{AGENTS}/a1/capabilities", json={}, headers=owner)
    assert problem_fields(assert_problem(missing, 400, "validation_error")) == ["capabilities"]


async def test_retire_shows_retired_and_a_second_retire_conflicts(http, gateway):
    a1 = gateway.key("a1")
    await registered(http, a1, "a1")

    retired = await http.post(f"{AGENTS}/a1/retire", json={"reason": "decommissioned"}, headers=a1)
    assert retired.status_code == 200, retired.text
    assert retired.json()["status"] == "retired"
    assert retired.json()["retired_reason"] == "decommissioned"
    assert_problem(await http.post(f"{AGENTS}/a1/retire", headers=a1), 409, "agent_retired")
    assert_problem(await http.post(f"{AGENTS}/ghost/retire", headers=a1), 404, "agent_not_found")


# Heartbeats --------------------------------------------------------------------------------------


async def test_heartbeat_is_a_request_on_the_agents_heartbeat_subject(http, gateway, engine):
    a1 = gateway.key("a1")
    await registered(http, a1, "a1")
    beat = await http.post(f"{AGENTS}/a1/heartbeat", headers=a1)
    assert beat.status_code == 200, beat.text
    assert beat.json() == {"agent_id": "a1", "status": "accepted"}
    operator = await http.post(f"{AGENTS}/a1/heartbeat", headers=gateway.key("ops", "operator"))
    assert operator.status_code == 200, operator.text
    other = await http.post(f"{AGENTS}/a1/heartbeat", headers=gateway.key("a2"))
    assert_problem(other, 403, "not_authorized")
    ghost = await http.post(f"{AGENTS}/ghost/heartbeat", headers=a1)
    assert_problem(ghost, 404, "agent_not_found")
    # The engine's liveness monitor took both beats (and recorded no event for them).
    assert engine.liveness.beats == 2
    # last_seen comes from the liveness bucket: newer than the registration.
    registered_seen = (await get_agent(http, a1, "a1"))["registered_at"]
    for _ in range(300):
        seen = (await get_agent(http, a1, "a1"))["last_seen"]
        if seen > registered_seen:
            break
        await asyncio.sleep(0.01)
    assert seen > registered_seen


# Completion evidence ----------------------------------------------------------------------------


async def test_verify_completion_returns_the_verdict_with_reasons_and_score(http, gateway):
    keys = {name: gateway.key(name) for name in ("a1", "a2")}
    for name, headers in keys.items():
        await registered(http, headers, name)
    session_id = await open_session(http, gateway.key("coord", "operator"), ["a1", "a2"])
    done = now()  # completed, then submitted: a claim is never later than its result
    assert (await submit(http, keys["a1"], session_id, output_hash="sha256:ab")).status_code == 200

    ok = await verify(
        http, keys["a1"], "a1", task_id=session_id, completion_time=done,
        output_hash="sha256:ab", response_time=2.0,
    )  # fmt: skip
    assert ok.status_code == 200, ok.text
    verdict = ok.json()
    assert verdict["verdict"] == "verified"
    assert verdict["verified"] is True
    assert verdict["reasons"] == []
    assert verdict["task_id"] == session_id
    assert verdict["task_kind"] == "session"
    assert verdict["response_time"] == 2.0
    # 0.5 + 0.3 * timeliness + 0.2 * 1 (the only result so far); timeliness comes from the
    # record (assignment to recorded result, a moment here), not from the stated 2 s.
    parts = verdict["score_parts"]
    assert parts["verified"] == 1.0 and parts["agreement"] == 1.0
    assert 1 - 5 / 600 < parts["timeliness"] <= 1.0
    assert verdict["quality_score"] == pytest.approx(0.7 + 0.3 * parts["timeliness"])
    assert verdict["command_status"] == "accepted"

    repeat = await verify(http, keys["a1"], "a1", task_id=session_id, completion_time=now(),
                          output_hash="sha256:ab")  # fmt: skip
    assert repeat.status_code == 200, repeat.text
    assert repeat.json()["verdict"] == "rejected"
    assert [r["code"] for r in repeat.json()["reasons"]] == ["already_verified"]
    assert repeat.json()["quality_score"] == 0.0

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    wrong = await verify(http, keys["a2"], "a2", task_id=session_id, completion_time=future,
                         output_hash="sha256:zz")  # fmt: skip
    assert [r["code"] for r in wrong.json()["reasons"]] == ["no_result", "completion_in_future"]

    a1 = await get_agent(http, keys["a1"], "a1")
    assert (a1["verified"], a1["rejected"], a1["avg_success_rate"]) == (1, 1, 0.5)
    assert a1["reliability_score"] == 0.5
    assert a1["status"] == "online"  # submitted: no longer busy
    assert (await get_agent(http, keys["a2"], "a2"))["status"] == "busy"

    # The console's sparklines: each agent's latest verdicts, oldest first.
    recent = await http.get("/api/v1/verdicts/recent", headers=keys["a2"],
                            params=[("agent", "a1"), ("agent", "a2"), ("agent", "nobody")])  # fmt: skip
    assert recent.json() == {"a1": [True, False], "a2": [False], "nobody": []}
    bad = await http.get("/api/v1/verdicts/recent", headers=keys["a2"],
                         params={"agent": "not an id"})  # fmt: skip
    assert bad.status_code == 400


async def test_verify_completion_names_every_missing_field(http, gateway):
    a1 = gateway.key("a1")
    await registered(http, a1, "a1")

    empty = await verify(http, a1, "a1")
    problem = assert_problem(empty, 400, "validation_error")
    assert problem_fields(problem) == ["task_id", "completion_time", "output_hash"]
    assert "task_id, completion_time, output_hash" in problem["detail"]
    partial = await verify(http, a1, "a1", task_id="x", response_time=1)
    assert problem_fields(assert_problem(partial, 400, "validation_error")) == [
        "completion_time",
        "output_hash",
    ]
    no_body = await http.post(f"{AGENTS}/a1/verify-completion", headers=a1)
    assert_problem(no_body, 400, "validation_error")
    naive = await verify(http, a1, "a1", task_id="x", completion_time="2030-01-01T00:00:00",
                         output_hash="h")  # fmt: skip
    assert problem_fields(assert_problem(naive, 400, "validation_error")) == ["completion_time"]
    beyond = await verify(http, a1, "a1", task_id="x", completion_time="9999-12-31T23:00:00-05:00",
                          output_hash="h")  # fmt: skip
    problem = assert_problem(beyond, 400, "validation_error")
    assert "out of range" in problem["detail"]


async def test_verify_completion_replays_the_same_verdict_for_an_idempotency_key(http, gateway):
    a1 = {**gateway.key("a1"), "Idempotency-Key": "claim-1"}
    await registered(http, gateway.key("a1"), "a1")
    body = {"task_id": "not-a-task", "completion_time": now(), "output_hash": "h"}

    first = await verify(http, a1, "a1", **body)
    second = await verify(http, a1, "a1", **body)

    assert first.json()["reasons"] == [
        {"code": "task_not_found", "message": "no task 'not-a-task'"}
    ]
    assert second.status_code == 200, second.text
    assert second.headers["idempotent-replayed"] == "true"
    assert {k: v for k, v in second.json().items() if k != "command_status"} == {
        k: v for k, v in first.json().items() if k != "command_status"
    }
    assert second.json()["command_status"] == "duplicate"
    assert (await get_agent(http, a1, "a1"))["rejected"] == 1


# Reading ----------------------------------------------------------------------------------------


async def test_list_filters_sorts_by_reliability_and_pages(http, gateway):
    ops = gateway.key("ops", "operator")
    keys = {name: gateway.key(name) for name in ("a1", "a2", "a3", "a4")}
    for name, headers in keys.items():
        caps = ["python", "sql"] if name in ("a2", "a3") else ["python"]
        await registered(http, headers, name, capabilities=caps)
    # a3 gets one verified completion; a1 one rejected; a4 is busy in an open session.
    session_id = await open_session(http, ops, ["a3", "a4"])
    assert (await submit(http, keys["a3"], session_id, output_hash="h3")).status_code == 200
    ok = await verify(http, keys["a3"], "a3", task_id=session_id, completion_time=now(),
                      output_hash="h3")  # fmt: skip
    assert ok.json()["verdict"] == "verified"
    bad = await verify(http, keys["a1"], "a1", task_id=session_id, completion_time=now(),
                       output_hash="h3")  # fmt: skip
    assert [r["code"] for r in bad.json()["reasons"]] == ["not_assigned"]

    async def names(**params: Any) -> list[str]:
        response = await http.get(AGENTS, params=params, headers=ops)
        assert response.status_code == 200, response.text
        return [a["agent_id"] for a in response.json()["items"]]

    assert await names() == ["a4", "a3", "a2", "a1"]
    assert await names(sort="reliability") == ["a3", "a2", "a4", "a1"]  # 2/3, 1/2, 1/2, 1/3
    assert await names(capability="sql") == ["a3", "a2"]
    assert await names(capability=["sql", "python"], sort="reliability") == ["a3", "a2"]
    assert await names(status="busy") == ["a4"]
    assert await names(status=["online", "busy"], capability="sql") == ["a3", "a2"]
    assert await names(min_success_rate=0.5) == ["a3"]

    listed = (await http.get(AGENTS, params={"sort": "reliability"}, headers=ops)).json()["items"]
    a3 = listed[0]
    assert (a3["avg_success_rate"], a3["total_tasks"], a3["status"]) == (1.0, 1, "online")
    assert a3["reliability_score"] == round(2 / 3, 6)
    assert a3["last_activity"] >= a3["registered_at"]

    seen: list[str] = []
    params: dict[str, Any] = {"sort": "reliability", "limit": 3}
    while True:
        page = (await http.get(AGENTS, params=params, headers=ops)).json()
        seen += [a["agent_id"] for a in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ["a3", "a2", "a4", "a1"]


async def test_list_refuses_unknown_choices_and_foreign_cursors(http, gateway):
    ops = gateway.key("ops", "operator")
    bad_status = await http.get(AGENTS, params={"status": "asleep"}, headers=ops)
    assert assert_problem(bad_status, 400, "invalid_parameter")["details"]["allowed"] == [
        "online", "busy", "offline", "retired",
    ]  # fmt: skip
    assert_problem(await http.get(AGENTS, params={"sort": "age"}, headers=ops), 400,
                   "invalid_parameter")  # fmt: skip
    assert_problem(await http.get(AGENTS, params={"cursor": "nope"}, headers=ops), 400,
                   "invalid_cursor")  # fmt: skip
    rate = await http.get(AGENTS, params={"min_success_rate": 2}, headers=ops)
    assert_problem(rate, 400, "validation_error")


async def test_get_agent_shows_busy_and_its_open_tasks(http, gateway):
    a1 = gateway.key("a1")
    await registered(http, a1, "a1")
    session_id = await open_session(http, gateway.key("coord", "operator"), ["a1"])

    # The open waited for the sessions read model; the agents one follows the same log.
    for _ in range(500):
        view = await get_agent(http, gateway.key("aud", "auditor"), "a1")
        if view["status"] == "busy":
            break
        await asyncio.sleep(0.01)
    assert view["status"] == "busy"
    assert [t["task_id"] for t in view["open_assignments"]] == [session_id]
    assert view["open_tasks"] == 1
    assert_problem(await http.get(f"{AGENTS}/ghost", headers=a1), 404, "agent_not_found")


async def test_metrics_by_window_and_as_of(http, gateway):
    a1 = gateway.key("a1")
    await registered(http, a1, "a1")
    tasks = []
    for i in range(3):
        session_id = await open_session(http, gateway.key("coord", "operator"), ["a1"])
        tasks.append((session_id, now()))
        assert (await submit(http, a1, session_id, output_hash=f"h{i}")).status_code == 200
    # Stated response times fit the record (a moment, plus the 5 s clock-skew allowance).
    for i, ((session_id, done), seconds) in enumerate(zip(tasks, (2.0, 0.5, 4.5), strict=True)):
        response = await verify(http, a1, "a1", task_id=session_id, completion_time=done,
                                output_hash=f"h{i}", response_time=seconds)  # fmt: skip
        assert response.json()["verdict"] == "verified", response.text
    rejected = await verify(http, a1, "a1", task_id=tasks[0][0], completion_time=tasks[0][1],
                            output_hash="h0")  # fmt: skip
    assert rejected.json()["verdict"] == "rejected"

    for timeframe in ("1h", "24h", "7d", "all"):
        response = await http.get(
            f"{AGENTS}/a1/metrics", params={"timeframe": timeframe}, headers=a1
        )
        assert response.status_code == 200, response.text
        m = response.json()
        assert m["timeframe"] == timeframe
        assert (m["verified"], m["rejected"], m["total_tasks"]) == (3, 1, 3)
        assert m["success_rate"] == 0.75
        assert (m["response_time_p50"], m["response_time_p95"]) == (2.0, 4.5)  # of .5, 2, 4.5
        assert m["reliability_score"] == round(4 / 6, 6)
        assert m["last_activity"] is not None

    registered_at = (await get_agent(http, a1, "a1"))["registered_at"]
    before = await http.get(f"{AGENTS}/a1/metrics", params={"timeframe": "all",
                                                            "as_of": registered_at}, headers=a1)  # fmt: skip
    m = before.json()
    assert (m["verified"], m["rejected"], m["total_tasks"]) == (0, 0, 0)
    assert m["success_rate"] is None
    assert m["as_of"] == registered_at
    assert m["last_activity"] == registered_at

    bad = await http.get(f"{AGENTS}/a1/metrics", params={"timeframe": "1y"}, headers=a1)
    problem = assert_problem(bad, 400, "invalid_parameter")
    assert problem["details"] == {"field": "timeframe", "allowed": ["1h", "24h", "7d", "all"]}
    assert "1h, 24h, 7d, all" in problem["detail"]
    for moment in ("yesterday", "0001-01-01T00:00:00Z", "9999-12-31T23:00:00-05:00"):
        bad_time = await http.get(f"{AGENTS}/a1/metrics", params={"as_of": moment}, headers=a1)
        assert assert_problem(bad_time, 400, "invalid_parameter")["details"]["field"] == "as_of"
    assert_problem(await http.get(f"{AGENTS}/ghost/metrics", headers=a1), 404, "agent_not_found")


async def test_events_are_the_agents_history_paged(http, gateway):
    a1 = gateway.key("a1")
    await registered(http, a1, "a1")
    for caps in (["go"], ["rust"], ["zig"]):
        response = await http.put(f"{AGENTS}/a1/capabilities", json={"capabilities": caps},
                                  headers=a1)  # fmt: skip
        assert response.status_code == 200, response.text

    assert_problem(await http.get(f"{AGENTS}/a1/events", headers=a1), 403, "forbidden")
    auditor = gateway.key("audit", "auditor")
    page = (await http.get(f"{AGENTS}/a1/events", params={"limit": 2}, headers=auditor)).json()
    assert [e["type"] for e in page["items"]] == ["AgentRegistered", "AgentCapabilitiesUpdated"]
    assert page["items"][0]["aggregate_id"] == str(agent_uuid("a1"))
    assert page["items"][0]["actor"] == "a1"
    assert page["next_after_version"] == 2
    rest = await http.get(f"{AGENTS}/a1/events", params={"after_version": 2}, headers=auditor)
    assert [e["data"]["capabilities"] for e in rest.json()["items"]] == [["rust"], ["zig"]]
    ghost = await http.get(f"{AGENTS}/ghost/events", headers=auditor)
    assert_problem(ghost, 404, "agent_not_found")

    # Time travel: the agent as it was, folded from its history (auditors only).
    past = await http.get(f"{AGENTS}/a1", params={"at_version": 2}, headers=auditor)
    assert past.status_code == 200, past.text
    assert past.json()["capabilities"] == ["go"]
    now = (await http.get(f"{AGENTS}/a1", headers=a1)).json()
    assert now["capabilities"] == ["zig"]
    first = page["items"][0]["occurred_at"]
    at_start = await http.get(f"{AGENTS}/a1", params={"as_of": first}, headers=auditor)
    assert at_start.json()["capabilities"] == page["items"][0]["data"]["capabilities"]
    denied = await http.get(f"{AGENTS}/a1", params={"at_version": 1}, headers=a1)
    assert_problem(denied, 403, "forbidden")
    too_far = await http.get(f"{AGENTS}/a1", params={"at_version": 9}, headers=auditor)
    assert_problem(too_far, 404, "version_not_found")


async def test_the_agents_api_is_in_the_openapi_document(http):
    document = (await http.get("/schema/openapi.json")).json()
    paths = document["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/agents"])
    for suffix in ("capabilities", "retire", "heartbeat", "verify-completion", "metrics", "events"):
        assert f"/api/v1/agents/{{agent_id}}/{suffix}" in paths, suffix


async def test_ready_reports_the_lag_of_every_read_model(http, gateway):
    await registered(http, gateway.key("a1"), "a1")
    checks = (await http.get("/ready")).json()["checks"]
    assert set(checks["projections"]) == {"sessions", "workflows", "agents", "mcp"}
    assert checks["projections"]["agents"]["position"] >= 1


async def test_a_workflow_phase_makes_its_assignee_busy_and_can_be_verified(http, gateway, nc):
    a1 = gateway.key("a1")
    await registered(http, a1, "a1")
    started = await http.post(
        "/api/v1/workflows",
        json={"requirements": "ship it", "workflow_type": "quick"},
        headers=gateway.key("ops", "operator"),
    )
    assert started.status_code == 202, started.text
    wid = started.json()["workflow_id"]
    task_id = f"{wid}/implement"
    reply = await send(nc, "ops", "start_phase",
                       {"workflow_id": wid, "phase": "implement", "assignee": "a1"},
                       aggregate="workflow")  # fmt: skip
    assert reply["status"] == "accepted", reply

    async def busy() -> bool:
        view = await get_agent(http, a1, "a1")
        return view["status"] == "busy" and view["open_assignments"][0]["task_id"] == task_id

    await eventually(busy, what="a1 busy with its phase")
    result = {"diff": "+retry"}
    reply = await send(nc, "a1", "complete_phase",
                       {"workflow_id": wid, "phase": "implement", "result": result},
                       aggregate="workflow")  # fmt: skip
    assert reply["status"] == "accepted", reply

    verdict = await verify(http, a1, "a1", task_id=task_id, completion_time=now(),
                           output_hash=result_hash(result))  # fmt: skip
    assert verdict.status_code == 200, verdict.text
    assert (verdict.json()["verdict"], verdict.json()["task_kind"]) == ("verified", "phase")
    view = await get_agent(http, a1, "a1")
    assert (view["status"], view["total_tasks"], view["verified"]) == ("online", 1, 1)
