"""Agents end to end under ``chorus up``: a fleet of SDK agents on a real nats-server,
an operator on the HTTP API.

Agents register and heartbeat; one stops and is marked offline; a ``replace`` session swaps
it for another; completion claims with a wrong hash, for another agent's task, with a time
in the future, and a repeat are each rejected with their reason; metrics over windows match
values computed by hand; routing picks the agents the record says it should.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from chorus.agent_sdk import AgentClient

from .conftest import async_wait_until, free_port, read_store, running_chorus, sqlite_url

FLEET = {
    "alpha": ["review", "python"],
    "bravo": ["review", "python"],
    "charlie": ["review"],
    "delta": ["review"],
    "echo": ["python"],
}


async def open_session(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await http.post("/api/v1/sessions", json={"task": {"description": "t"}, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def session(http: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    return dict((await http.get(f"/api/v1/sessions/{sid}")).json())


async def agent(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    return dict((await http.get(f"/api/v1/agents/{name}")).json())


async def metrics(http: httpx.AsyncClient, name: str, timeframe: str, **params: str) -> Any:
    response = await http.get(f"/api/v1/agents/{name}/metrics",
                              params={"timeframe": timeframe, **params})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.e2e
async def test_agents_liveness_evidence_metrics_and_routing_under_chorus_up(
    tmp_path: Path,
) -> None:
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    # Offline after 1.5 s of silence: quick, yet far from a stall of a busy CI machine.
    env = {"CHORUS_HEARTBEAT_INTERVAL": "0.5", "CHORUS_MISSED_HEARTBEATS": "3"}
    with running_chorus(data_dir, free_port(), workdir, **env) as up:
        assert up.nats_url and up.admin_key, up.output
        headers = {"Authorization": f"Bearer {up.admin_key}"}
        connections = [await up.bus(name) for name in FLEET]
        clients = {
            name: AgentClient(nc, name, heartbeat_interval=0.05)
            for name, nc in zip(FLEET, connections, strict=True)
        }
        try:
            async with httpx.AsyncClient(base_url=up.base_url, headers=headers, timeout=30,
                                         trust_env=False) as http:  # fmt: skip
                await scenario(http, clients)
        finally:
            for client in clients.values():
                await client.stop()
            for nc in connections:
                await nc.close()
    events = [r for r in read_store(sqlite_url(data_dir / "events.db")) if r.aggregate == "agent"]
    # Thousands of heartbeats, and the agents' own records hold only what happened to them:
    # 5 registrations, 7 verdicts, charlie offline and back.
    assert sorted(Counter(r.type for r in events).items()) == [
        ("AgentCameOnline", 1), ("AgentRegistered", 5), ("AgentWentOffline", 1),
        ("CompletionRejected", 4), ("CompletionVerified", 3),
    ]  # fmt: skip


async def scenario(http: httpx.AsyncClient, clients: dict[str, AgentClient]) -> None:
    # Register and heartbeat.
    for name, capabilities in FLEET.items():
        reply = await clients[name].register(capabilities=capabilities, type="llm")
        assert reply.status == "accepted", reply
        await clients[name].start()

    async def all_listed() -> bool:
        listed = (await http.get("/api/v1/agents", params={"limit": 10})).json()["items"]
        return sorted(a["agent_id"] for a in listed) == sorted(FLEET)

    await async_wait_until(all_listed, 30, "the fleet in the registry")

    # A record: alpha verified twice and rejected once; bravo verified once; charlie
    # rejected once (wrong hash).
    first = (await open_session(http, participants=["alpha", "bravo", "charlie"]))["session_id"]
    second = (await open_session(http, participants=["alpha"]))["session_id"]
    for name in ("alpha", "bravo", "charlie"):
        reply = await clients[name].submit_result(first, {"answer": 42, "by": "the book"})
        assert reply.status == "accepted", reply
    await clients["alpha"].submit_result(second, {"answer": 7})
    now = datetime.now(UTC)
    claims = [
        ("alpha", first, {"result": {"by": "the book", "answer": 42}, "response_time": 1.0}),
        ("bravo", first, {"result": {"answer": 42, "by": "the book"}, "response_time": 2.0}),
        ("charlie", first, {"output_hash": "sha256:forged"}),  # a wrong hash
        ("delta", first, {"result": {"answer": 42, "by": "the book"}}),  # another's task
        ("alpha", second, {"result": {"answer": 7},  # a time in the future
                           "completion_time": now + timedelta(hours=1)}),
        ("alpha", second, {"result": {"answer": 7}, "response_time": 3.0}),
        ("alpha", second, {"result": {"answer": 7}}),  # a repeat
    ]  # fmt: skip
    for name, task, claim in claims:
        reply = await clients[name].verify_completion(task, **claim)
        assert reply.status == "accepted", reply
    await async_wait_until(
        lambda: _verdict_count(http, 7), 30, "the read model to show every verdict"
    )
    reasons = {}
    for name in ("charlie", "delta", "alpha"):
        rows = await _verdicts(http, name)
        reasons[name] = [[r["code"] for r in v["reasons"]] for v in rows]
    assert reasons["charlie"] == [["hash_mismatch"]]
    assert reasons["delta"] == [["not_assigned"]]
    assert reasons["alpha"] == [[], ["completion_in_future"], [], ["already_verified"]]

    # Metrics by hand. alpha: 2 verified, 2 rejected -> success 0.5; response times of
    # verified completions 1 and 3 -> nearest-rank p50 = 1, p95 = 3; 2 tasks assigned.
    for timeframe in ("1h", "24h", "7d", "all"):
        m = await metrics(http, "alpha", timeframe)
        assert (m["verified"], m["rejected"], m["total_tasks"]) == (2, 2, 2), (timeframe, m)
        assert m["success_rate"] == 0.5
        assert (m["response_time_p50"], m["response_time_p95"]) == (1.0, 3.0)
        assert m["reliability_score"] == pytest.approx(3 / 6, abs=1e-6)
    before = (now - timedelta(hours=2)).isoformat()
    past = await metrics(http, "alpha", "all", as_of=before)
    assert (past["verified"], past["rejected"], past["total_tasks"]) == (0, 0, 0)
    bravo = await metrics(http, "bravo", "24h")
    assert (bravo["verified"], bravo["rejected"], bravo["success_rate"]) == (1, 0, 1.0)
    bad = await http.get("/api/v1/agents/alpha/metrics", params={"timeframe": "1y"})
    assert bad.status_code == 400 and "1h" in bad.text

    # Routing by reliability (v + 1) / (v + r + 2): bravo 2/3, alpha 3/6, then charlie and
    # delta 1/3 each (a false claim counts against an agent; the tie is broken by name).
    eligible = ["bravo", "alpha", "charlie", "delta"]
    scores = [(await agent(http, n))["reliability_score"] for n in eligible]
    assert scores == pytest.approx([2 / 3, 1 / 2, 1 / 3, 1 / 3], abs=1e-6)
    routed = await open_session(http, capabilities=["review"], size=2)
    assert (await session(http, routed["session_id"]))["participants"] == ["bravo", "alpha"]

    # One agent stops: offline, and the replace session swaps it for another.
    watched = await open_session(http, participants=["bravo", "charlie"], capabilities=["review"],
                                 on_participant_lost="replace")  # fmt: skip
    await clients["charlie"].stop()
    await async_wait_until(lambda: _status_is(http, "charlie", "offline"), 30, "charlie offline")
    await async_wait_until(
        lambda: _participants_without(http, watched["session_id"], "charlie"), 30,
        "charlie to be replaced",
    )  # fmt: skip
    replaced = await session(http, watched["session_id"])
    # The best online agent with the capability that is not in the session yet.
    assert replaced["participants"] == ["bravo", "alpha"]
    reply = await clients["charlie"].submit_result(watched["session_id"], {"late": True})
    assert reply.error is not None and reply.error.code == "not_a_participant"
    # Back: a heartbeat brings it online again.
    await clients["charlie"].start()
    await async_wait_until(lambda: _status_is(http, "charlie", "online"), 30, "charlie back")


async def _verdicts(http: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    auditor_view = (await http.get(f"/api/v1/agents/{name}/events")).json()["items"]
    return [
        {"reasons": e["data"].get("reasons", [])}
        for e in auditor_view
        if e["type"] in ("CompletionVerified", "CompletionRejected")
    ]


async def _verdict_count(http: httpx.AsyncClient, expected: int) -> bool:
    total = 0
    for name in FLEET:
        m = await metrics(http, name, "all")
        total += m["verified"] + m["rejected"]
    return total == expected


async def _status_is(http: httpx.AsyncClient, name: str, status: str) -> bool:
    return (await agent(http, name))["status"] in (
        (status, "busy") if status == "online" else (status,)
    )


async def _participants_without(http: httpx.AsyncClient, sid: str, name: str) -> bool:
    return name not in (await session(http, sid))["participants"]
