"""``GET /metrics`` of a running ``chorus up``: one scrape shows every process, and the
counters match the commands sent.

The engine, projector and gateway are separate processes writing to one metrics directory;
the gateway's scrape must show the engine's command counters, the projector's positions and
its own HTTP counters, each equal to what this test did.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.metrics_text import Scrape

from .conftest import (
    async_wait_until,
    domain_events,
    free_port,
    open_body,
    read_store,
    running_chorus,
    sqlite_url,
    submit_body,
)

pytestmark = pytest.mark.e2e

SESSIONS = 5
PARTICIPANTS = ["agent-1", "agent-2"]


async def scrape(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def test_one_scrape_counts_every_command_of_every_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_chorus(data_dir, free_port(), tmp_path) as up:
        assert up.nats_url and up.admin_key
        # Every actor speaks on the bus with its own key, as the secured bus requires.
        buses = {"ops-1": await up.bus("ops-1", up.key("ops-1", role="operator"))}
        for actor in [*PARTICIPANTS, "agent-9"]:
            buses[actor] = await up.bus(actor)
        admin = {"Authorization": f"Bearer {up.admin_key}"}
        try:
            async with httpx.AsyncClient(
                base_url=up.base_url, headers=admin, timeout=30, trust_env=False
            ) as http:

                async def ask(actor: str, command: str, body: dict[str, object]) -> str:
                    msg = await buses[actor].request(
                        f"chorus.cmd.{actor}.session.{command}", json.dumps(body).encode(), 10
                    )
                    return str(json.loads(msg.data)["status"])

                sessions = [str(uuid.uuid4()) for _ in range(SESSIONS)]
                for sid in sessions:
                    assert (
                        await ask("ops-1", "open", open_body(f"o-{sid}", sid, PARTICIPANTS))
                        == "accepted"
                    )
                for sid in sessions:
                    for agent in PARTICIPANTS:
                        body = submit_body(f"{agent}-{sid}", sid, {"ok": True})
                        assert await ask(agent, "submit_result", body) == "accepted"
                first = sessions[0]
                again = open_body(f"o-{first}", first, PARTICIPANTS)
                assert await ask("ops-1", "open", again) == "duplicate"
                outsider = submit_body("x-1", first, {"ok": True})
                assert await ask("agent-9", "submit_result", outsider) == "rejected"
                malformed = await buses["ops-1"].request(
                    "chorus.cmd.ops-1.session.open", b"not json", 10
                )
                assert json.loads(malformed.data)["error"]["code"] == "malformed_message"

                started = await http.post("/api/v1/workflows", json={
                    "requirements": "r", "workflow_type": "quick", "priority": "high"})  # fmt: skip
                assert started.status_code == 202, started.text
                workflow = f"/api/v1/workflows/{started.json()['workflow_id']}"

                async def waiting() -> bool:
                    """The dispatcher found no agent for it and recorded so (PhaseWaiting):
                    the last event this test causes, so the log's head settles after it."""
                    status = (await http.get(workflow)).json()
                    return status.get("waiting_for_agent") is not None

                await async_wait_until(waiting, 60, "the workflow to wait for an agent")
                for _ in range(3):
                    assert (await http.get("/api/v1/sessions")).status_code == 200
                assert (await http.get("/api/v1/sessions/not-a-uuid")).status_code in (400, 404)

                async def settled() -> Scrape | None:
                    """Once the relay and every read model have reached the log's head."""
                    s = await scrape(http)
                    head = s.value("chorus_event_store_head_position")
                    positions = [s.value("chorus_projection_position", projection=p)
                                 for p in ("sessions", "workflows", "agents")]  # fmt: skip
                    positions.append(s.value("chorus_relay_position"))
                    # The lag gauges are set when each process last looked: wait for
                    # them to say caught up too, not only the positions.
                    lags = [s.value("chorus_projection_lag_events", projection=p)
                            for p in ("sessions", "workflows", "agents")]  # fmt: skip
                    lags.append(s.value("chorus_relay_lag_events"))
                    done = head > 0 and all(p == head for p in positions) and not any(lags)
                    return s if done and s.value("chorus_sessions", status="succeeded") else None

                s = await async_wait_until(settled, 60, "read models and relay to catch up")
                overview = (await http.get("/api/v1/metrics")).json()
                assert overview["sessions"] == {"succeeded": SESSIONS}
                assert overview["projections"]["sessions"]["lag"] == 0

                ws = await connect(
                    f"{up.ws_url}/api/v1/sessions/{first}/feed?since=0",
                    additional_headers=admin, proxy=None,
                )  # fmt: skip
                try:
                    await asyncio.wait_for(ws.recv(), 10)  # the handshake is done, the feed runs
                    with_feed = await scrape(http)
                finally:
                    await ws.close()
        finally:
            for bus in buses.values():
                await bus.close()

    def commands(command: str, status: str) -> float:
        return s.value("chorus_commands_total", aggregate="session", command=command, status=status)

    assert commands("open", "accepted") == SESSIONS
    assert commands("open", "duplicate") == 1
    assert commands("open", "rejected") == 1  # the malformed one, rejected at the edge
    assert commands("submit_result", "accepted") == SESSIONS * len(PARTICIPANTS)
    assert commands("submit_result", "rejected") == 1
    assert s.value("chorus_dead_letters_total", reason="malformed_message") == 1
    assert s.value("chorus_commands_total", aggregate="workflow", command="start",
                   status="accepted") == 1  # fmt: skip
    # Every command that reached a batch (ours, and any the engine sent itself, such as
    # the dispatcher's) was answered once: all answered commands but the dead letter.
    decided = s.value("chorus_commands_total") - s.value("chorus_dead_letters_total")
    assert decided >= SESSIONS + 1 + SESSIONS * len(PARTICIPANTS) + 1 + 1
    assert s.value("chorus_engine_batch_size_sum") == decided
    assert s.value("chorus_command_reply_seconds_count") == decided
    assert 1 <= s.value("chorus_engine_commit_seconds_count") <= decided
    # The relay published every domain event once; the projector consumed the whole log.
    events = domain_events(read_store(sqlite_url(data_dir / "events.db")))
    assert s.value("chorus_relay_published_total") == len(events)
    assert s.value("chorus_relay_lag_events") == 0
    for projection in ("sessions", "workflows", "agents"):
        assert s.value("chorus_projection_lag_events", projection=projection) == 0
    assert s.value("chorus_sessions", status="succeeded") == SESSIONS
    assert s.value("chorus_workflows_queued", priority="high") == 1
    assert s.value("chorus_workflows_queued", priority="critical") == 0
    # The gateway's own HTTP counters, by route template and status.
    assert s.value("chorus_http_requests_total", method="GET", path="/api/v1/sessions",
                   status_code="200") == 3  # fmt: skip
    assert s.value("chorus_http_request_duration_seconds_count", path="/api/v1/sessions") == 3
    feed_route = "/api/v1/sessions/{session_id}/feed"
    assert with_feed.value("chorus_feed_subscribers", feed=feed_route) == 1
