"""``WS /api/v1/agents/feed`` of a real gateway: live status updates, narrowing, health
checks answered by raw nats-py agents, and errors that keep the socket open."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.integration.test_gateway_support import bearer, drain_until_pong, recv_json

AGENTS = "/api/v1/agents"


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


def feed_url(gateway: Any, **params: Any) -> str:
    """Without the opening snapshot unless asked (these tests watch the live updates)."""
    params.setdefault("snapshot", "false")
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{gateway.ws_url}{AGENTS}/feed" + (f"?{query}" if query else "")


async def register(http: httpx.AsyncClient, headers: dict[str, str], name: str) -> None:
    response = await http.post(
        AGENTS, json={"name": name, "capabilities": ["python"]}, headers=headers
    )
    assert response.status_code == 201, response.text


async def retire(http: httpx.AsyncClient, headers: dict[str, str], name: str) -> None:
    response = await http.post(f"{AGENTS}/{name}/retire", headers=headers)
    assert response.status_code == 200, response.text


async def updates(ws: Any, count: int) -> list[dict[str, Any]]:
    """The next ``count`` frames, each an agent status update."""
    out = []
    for _ in range(count):
        frame = await recv_json(ws)
        assert isinstance(frame, dict) and frame.get("type") == "agent_status", frame
        out.append(frame)
    return out


async def relayed(gateway: Any, headers: dict[str, str], count: int) -> None:
    """Wait until the first ``count`` agent events are in the stream: a live feed opened
    after that cannot see them (the relay publishes a moment after the read model shows)."""
    async with websockets.connect(feed_url(gateway, since=0), additional_headers=headers) as ws:
        await updates(ws, count)


async def test_feed_sends_live_status_updates_naming_the_agent(http, gateway):
    ops = gateway.key("ops", "operator")
    async with websockets.connect(feed_url(gateway), additional_headers=ops) as ws:
        await register(http, ops, "a1")
        (registered,) = await updates(ws, 1)
        caps = await http.put(
            f"{AGENTS}/a1/capabilities", json={"capabilities": ["go"]}, headers=ops
        )
        assert caps.status_code == 200, caps.text
        (changed,) = await updates(ws, 1)  # before retiring: its status is read at send time
        await retire(http, ops, "a1")
        (retired,) = await updates(ws, 1)
        assert await drain_until_pong(ws) == []

    assert registered["agent_id"] == "a1"
    assert registered["event"] == "AgentRegistered"
    assert registered["status"] == "online"
    assert registered["data"]["capabilities"] == ["python"]
    assert (changed["agent_id"], changed["event"]) == ("a1", "AgentCapabilitiesUpdated")
    assert changed["status"] == "online"  # unchanged by this event: from the read model
    assert (retired["agent_id"], retired["event"], retired["status"]) == (
        "a1",
        "AgentRetired",
        "retired",
    )
    assert registered["position"] < changed["position"] < retired["position"]
    history = (
        await http.get(f"{AGENTS}/a1/events", headers=gateway.key("audit", "auditor"))
    ).json()["items"]
    assert [e["position"] for e in history] == [
        u["position"] for u in (registered, changed, retired)
    ]


async def test_feed_is_live_from_now_unless_asked_since_a_position(http, gateway):
    ops = gateway.key("ops", "operator")
    await register(http, ops, "a1")
    await register(http, ops, "a2")

    async with websockets.connect(feed_url(gateway, since=0), additional_headers=ops) as ws:
        replayed = await updates(ws, 2)  # also proves both are in the stream by now
    assert [u["agent_id"] for u in replayed] == ["a1", "a2"]

    async with websockets.connect(
        feed_url(gateway, since=replayed[0]["position"]), additional_headers=ops
    ) as ws:
        (after,) = await updates(ws, 1)
        assert after["agent_id"] == "a2"
        assert await drain_until_pong(ws) == []

    async with websockets.connect(feed_url(gateway), additional_headers=ops) as ws:
        assert await drain_until_pong(ws) == []  # nothing recorded before the connection
        await retire(http, ops, "a2")
        (live,) = await updates(ws, 1)
    assert (live["agent_id"], live["status"]) == ("a2", "retired")


async def test_a_replay_shows_each_agents_status_as_it_was_at_that_event(http, gateway):
    """Replayed with ``?since=``, a registration that was later followed by retirement
    says ``online``, not the agent's status now."""
    ops = gateway.key("ops", "operator")
    await register(http, ops, "a1")
    await retire(http, ops, "a1")
    async with websockets.connect(feed_url(gateway, since=0), additional_headers=ops) as ws:
        replayed = await updates(ws, 2)
    assert [(u["event"], u["status"]) for u in replayed] == [
        ("AgentRegistered", "online"),
        ("AgentRetired", "retired"),
    ]


async def test_subscribe_agent_narrows_the_feed_and_subscribe_all_widens_it(http, gateway):
    ops = gateway.key("ops", "operator")
    for name in ("a1", "a2", "a3"):
        await register(http, ops, name)
    await relayed(gateway, ops, 3)

    async with websockets.connect(feed_url(gateway), additional_headers=ops) as ws:
        await ws.send(json.dumps({"type": "subscribe_agent", "agent_id": "a2"}))
        assert await recv_json(ws) == {"type": "subscribed", "agents": ["a2"]}
        await retire(http, ops, "a1")
        await retire(http, ops, "a2")
        (only,) = await updates(ws, 1)
        assert (only["agent_id"], only["event"]) == ("a2", "AgentRetired")
        assert await drain_until_pong(ws) == []  # a1's retirement came first and was left out

        await ws.send(json.dumps({"type": "subscribe_all"}))
        assert await recv_json(ws) == {"type": "subscribed", "agents": "*"}
        await retire(http, ops, "a3")
        (widened,) = await updates(ws, 1)
        assert widened["agent_id"] == "a3"


async def test_health_check_pings_online_agents_and_reports_who_answered(
    http, gateway, nats_server
):
    ops = gateway.key("ops", "operator")
    for name in ("a1", "a2", "a3"):
        await register(http, ops, name)
    await retire(http, ops, "a3")  # retired: not pinged
    await relayed(gateway, ops, 4)
    agent = await nats.connect(nats_server.url)  # a1 answers; a2 never does
    pings: list[str] = []
    try:

        async def pong(msg: Any) -> None:
            pings.append(msg.subject)
            await msg.respond(b'{"status": "ok"}')

        await agent.subscribe("chorus.agent.a1.ping", cb=pong)
        await agent.subscribe("chorus.agent.a3.ping", cb=pong)
        await agent.flush()

        async with websockets.connect(feed_url(gateway), additional_headers=ops) as ws:
            await ws.send(json.dumps({"type": "trigger_health_check", "timeout": 0.5}))
            report = await recv_json(ws)
            await ws.send(json.dumps({"type": "trigger_health_check"}))
            default = await recv_json(ws)
    finally:
        await agent.close()

    assert report == {"type": "health_check", "answered": ["a1"], "missing": ["a2"],
                      "timeout": 0.5}  # fmt: skip
    assert default["answered"] == ["a1"]
    assert default["timeout"] == 2.0
    assert pings == ["chorus.agent.a1.ping", "chorus.agent.a1.ping"]


async def test_bad_client_messages_get_errors_and_the_socket_stays_open(http, gateway):
    ops = gateway.key("ops", "operator")
    await register(http, ops, "a1")
    await relayed(gateway, ops, 1)
    async with websockets.connect(feed_url(gateway), additional_headers=ops) as ws:
        for message, code in (
            ("{not json", "invalid_json"),
            ("[1, 2]", "invalid_message"),
            (json.dumps({"type": "dance"}), "unknown_message_type"),
            (json.dumps({"agent_id": "a1"}), "unknown_message_type"),
            (json.dumps({"type": "subscribe_agent", "agent_id": "ghost"}), "agent_not_found"),
            (json.dumps({"type": "subscribe_agent"}), "agent_not_found"),
            (json.dumps({"type": "trigger_health_check", "timeout": 0}), "invalid_message"),
            (json.dumps({"type": "trigger_health_check", "timeout": "1"}), "invalid_message"),
            (json.dumps({"type": "trigger_health_check", "timeout": 31}), "invalid_message"),
        ):
            await ws.send(message)
            error = await recv_json(ws)
            assert error["type"] == "error", error
            assert error["code"] == code, (message, error)
            assert error["message"]
        assert await drain_until_pong(ws) == []
        await retire(http, ops, "a1")  # and it still feeds
        (update,) = await updates(ws, 1)
        assert update["agent_id"] == "a1"


async def test_feed_needs_a_key_and_takes_it_as_a_query_parameter(http, gateway):
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(feed_url(gateway)):
            pass
    assert 400 <= refused.value.response.status_code < 500  # uvicorn refuses the handshake
    auditor = gateway.key("aud", "auditor")
    async with websockets.connect(feed_url(gateway, token=bearer(auditor))) as ws:
        assert await drain_until_pong(ws) == []


async def test_the_feed_tells_when_work_makes_an_agent_busy_and_idle(http, gateway):
    a1 = gateway.key("a1")
    async with websockets.connect(feed_url(gateway), additional_headers=a1) as ws:
        await register(http, a1, "a1")
        [registered] = await updates(ws, 1)
        assert registered["status"] == "online"
        opened = await http.post(
            "/api/v1/sessions",
            json={"participants": ["a1"], "task": {"description": "t"}},
            headers=gateway.key("coord"),
        )
        assert opened.status_code == 201, opened.text
        session_id = opened.json()["session_id"]
        [busy] = await updates(ws, 1)
        assert (busy["agent_id"], busy["status"], busy["event"]) == ("a1", "busy", "SessionOpened")
        assert busy["data"] == {"aggregate": "session", "aggregate_id": session_id}
        submitted = await http.post(f"/api/v1/sessions/{session_id}/results",
                                    json={"result": {"ok": True}}, headers=a1)  # fmt: skip
        assert submitted.status_code == 200, submitted.text
        [idle] = await updates(ws, 1)
        assert (idle["status"], idle["event"]) == ("online", "ResultSubmitted")
        # The session's finalising changes nobody's status: no message for it.
        await ws.send("ping")
        assert await drain_until_pong(ws) == []


async def test_a_new_client_first_gets_every_agents_current_status(http, gateway):
    ops = gateway.key("ops", "operator")
    await register(http, ops, "a1")
    await register(http, ops, "a2")
    await retire(http, ops, "a2")
    async with websockets.connect(feed_url(gateway, snapshot="true"), additional_headers=ops) as ws:
        snapshot = await recv_json(ws)
        await register(http, ops, "a3")
        (live,) = await updates(ws, 1)
    assert snapshot["type"] == "agent_snapshot"
    assert {a["agent_id"]: a["status"] for a in snapshot["agents"]} == {
        "a1": "online", "a2": "retired"}  # fmt: skip
    assert (live["agent_id"], live["event"]) == ("a3", "AgentRegistered")


async def test_live_sockets_share_one_upstream_consumer_and_each_get_every_update(
    http, gateway, nc
):
    ops = gateway.key("ops", "operator")
    for name in ("a1", "a2"):
        await register(http, ops, name)
    await relayed(gateway, ops, 2)

    before = {c.name for c in await nc.jetstream().consumers_info("EVENTS")}
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(
                websockets.connect(feed_url(gateway), additional_headers=ops)
            )
            for _ in range(4)
        ]
        after = await nc.jetstream().consumers_info("EVENTS")
        new = {c.name for c in after if c.config.filter_subject == "chorus.evt.>"} - before
        assert len(new) == 1
        await retire(http, ops, "a1")
        await retire(http, ops, "a2")
        received = [await updates(ws, 2) for ws in sockets]

    assert all(r == received[0] for r in received)
    assert [(u["agent_id"], u["status"]) for u in received[0]] == [
        ("a1", "retired"),
        ("a2", "retired"),
    ]
