"""``WS /api/v1/events/feed``: the global log live, whole for auditors, notices for others;
every socket on the gateway's one shared channel, caught up from the event store."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
import websockets
from chorus.bootstrap import EngineService
from chorus.projections.runner import ProjectionRunner
from nats.aio.client import Client as NATS
from websockets.exceptions import InvalidStatus

from tests.conftest import Gateway
from tests.integration.test_gateway_support import (
    drain_until_pong,
    open_session,
    recv_events,
    submit,
)


def keys(gateway: Gateway) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Headers of an operator's, an auditor's and an agent's (``p1``) keys."""
    return (
        gateway.key("owner", "operator"), gateway.key("audrey", "auditor"),
        gateway.key("p1", "agent"),
    )  # fmt: skip


async def recv(ws: Any, count: int) -> list[dict[str, Any]]:
    return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(count)]


async def test_auditors_get_whole_events_and_other_roles_notices(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    owner, auditor, agent = keys(gateway)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        first = await open_session(http, owner, ["p1"])
        url = f"{gateway.ws_url}/api/v1/events/feed"
        async with (
            websockets.connect(url + "?since=0", additional_headers=auditor) as whole,
            websockets.connect(url + "?tail=1", additional_headers=agent) as notices,
        ):
            # The auditor replays from position 0; the agent starts with the stream's last event.
            [opened] = await recv(whole, 1)
            [tail] = await recv(notices, 1)
            assert opened["type"] == "SessionOpened" and opened["aggregate_id"] == first
            assert opened["data"]["participants"] == ["p1"] and opened["actor"] == "owner"
            assert tail == {
                "type": "event", "event": "SessionOpened", "position": opened["position"],
                "aggregate": "session", "aggregate_id": first, "version": 1,
                "occurred_at": tail["occurred_at"],
            }  # fmt: skip
            # Live: a second session reaches both, each in its form, once.
            second = await open_session(http, owner, ["p1"])
            [live_whole] = await recv(whole, 1)
            [live_notice] = await recv(notices, 1)
            assert live_whole["aggregate_id"] == live_notice["aggregate_id"] == second
            assert "data" not in live_notice and "actor" not in live_notice
            await notices.send("ping")
            assert await asyncio.wait_for(notices.recv(), 10) == "pong"


async def test_the_events_feed_needs_a_key(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"{gateway.ws_url}/api/v1/events/feed"):
            pass
    assert 400 <= refused.value.response.status_code < 500


# The shared channel and the store's catch-up ---------------------------------------------


async def global_log(http: httpx.AsyncClient, auditor: dict[str, str]) -> list[dict[str, Any]]:
    """Every event of the log, from ``GET /api/v1/events``."""
    events: list[dict[str, Any]] = []
    after, more = 0, True
    while more:
        response = await http.get(
            "/api/v1/events", params={"after": after, "limit": 1000}, headers=auditor
        )
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["items"]
        after, more = page["next_after"], page["more"]
    return events


def as_notice(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "event", "event": record["type"], "position": record["position"],
        "aggregate": record["aggregate"], "aggregate_id": record["aggregate_id"],
        "version": record["version"], "occurred_at": record["occurred_at"],
    }  # fmt: skip


async def recv_through(ws: Any, position: int) -> list[dict[str, Any]]:
    """Events until the one at ``position`` (fails on a timeout or a frame past it)."""
    received: list[dict[str, Any]] = []
    while not received or received[-1]["position"] < position:
        received += await recv_events(ws, 1)
    assert received[-1]["position"] == position, received[-1]
    return received


async def test_many_events_feed_sockets_share_one_upstream_consumer(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway, nc: NATS
) -> None:
    owner, auditor, agent = keys(gateway)
    roles = [auditor, agent, owner]
    js = nc.jetstream()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        await open_session(http, owner, ["p1"])
        before = {c.name for c in await js.consumers_info("EVENTS")}
        url = f"{gateway.ws_url}/api/v1/events/feed"
        async with contextlib.AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(
                    websockets.connect(url + "?tail=1", additional_headers=roles[i % 3])
                )
                for i in range(6)
            ]
            for ws in sockets:
                await recv_events(ws, 1)  # joined and caught up
            new = [c for c in await js.consumers_info("EVENTS") if c.name not in before]
            assert len(new) == 1  # one consumer for the six sockets, not one each
            assert new[0].config.filter_subject == "chorus.evt.>"
            second = await open_session(http, owner, ["p1"])
            live = [await recv_events(ws, 1) for ws in sockets]
    assert all(event["aggregate_id"] == second for [event] in live)
    assert live[0] == live[3]  # each variant the same for every socket that shows it
    assert live[1] == live[4] and live[1] != live[0]


async def test_since_catches_up_from_the_store_then_live_with_no_gap_or_duplicate(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    owner, auditor, agent = keys(gateway)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        for _ in range(3):
            await open_session(http, owner, ["p1", "p2"])
        since = (await global_log(http, auditor))[2]["position"]

        async def write() -> None:
            for _ in range(15):
                session = await open_session(http, owner, ["p1", "p2"])
                assert (await submit(http, agent, session)).status_code == 200

        url = f"{gateway.ws_url}/api/v1/events/feed?since={since}"
        writing = asyncio.create_task(write())  # the sockets join while events are written
        async with (
            websockets.connect(url, additional_headers=auditor) as whole,
            websockets.connect(url, additional_headers=agent) as notices,
        ):
            await writing
            log = [e for e in await global_log(http, auditor) if e["position"] > since]
            got_whole = await recv_through(whole, log[-1]["position"])
            got_notices = await recv_through(notices, log[-1]["position"])
            later = [await drain_until_pong(ws) for ws in (whole, notices)]

    assert got_whole == log
    assert got_notices == [as_notice(e) for e in log]
    for extra in later:  # only what was recorded since (none of it twice)
        positions = [e["position"] for e in extra]
        assert positions == sorted(set(positions)) and all(
            p > log[-1]["position"] for p in positions
        )


async def test_tail_starts_with_the_last_events_of_the_log(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    owner, auditor, _ = keys(gateway)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        for _ in range(5):  # commands leave bookkeeping rows between their events
            await open_session(http, owner, ["p1"])
        log = await global_log(http, auditor)
        url = f"{gateway.ws_url}/api/v1/events/feed"
        async with (
            websockets.connect(url + "?tail=3", additional_headers=auditor) as three,
            websockets.connect(url + "?tail=1000", additional_headers=auditor) as everything,
            websockets.connect(url + "?tail=0", additional_headers=auditor) as none,
        ):
            last_three = await recv_events(three, 3)
            all_of_it = await recv_events(everything, len(log))
            assert [await drain_until_pong(ws) for ws in (three, everything, none)] == [[]] * 3
    assert len(log) == 5
    assert last_three == log[-3:]
    assert all_of_it == log


async def test_a_socket_that_stops_reading_does_not_stall_the_others(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    """Two hundred events of 60 KB, far more than the slow socket's buffers hold: the fast
    socket gets them all while the slow one reads nothing, then the slow one gets them all
    too, in order, once (from its bounded queue or, dropped to catch-up, from the store)."""
    owner, auditor, _ = keys(gateway)
    participants = [f"p{i}" for i in range(200)]
    big = {"text": "x" * 60_000}  # the test gateway takes bodies up to 64 KiB
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        session = await open_session(http, owner, participants)
        since = (await global_log(http, auditor))[-1]["position"]
        url = f"{gateway.ws_url}/api/v1/events/feed?since={since}"
        async with (
            # The slow client stops reading from its connection once a frame waits unread.
            websockets.connect(url, additional_headers=auditor, max_queue=1) as slow,
            websockets.connect(url, additional_headers=auditor) as fast,
        ):
            for name in participants:
                response = await submit(http, gateway.key(name), session, big)
                assert response.status_code == 200, response.text
            log = [e for e in await global_log(http, auditor) if e["position"] > since]
            fast_got = await recv_through(fast, log[-1]["position"])
            slow_got = await recv_through(slow, log[-1]["position"])
    assert len(log) > len(participants)
    assert fast_got == slow_got == log
