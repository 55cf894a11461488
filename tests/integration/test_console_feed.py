"""``WS /api/v1/events/feed``: the global log live, whole for auditors, notices for others."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from chorus.bootstrap import EngineService
from chorus.projections.runner import ProjectionRunner
from websockets.exceptions import InvalidStatus

from tests.conftest import Gateway
from tests.integration.test_gateway_support import open_session


async def recv(ws: Any, count: int) -> list[dict[str, Any]]:
    return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(count)]


async def test_auditors_get_whole_events_and_other_roles_notices(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    owner = gateway.key("owner", "operator")
    auditor = gateway.key("audrey", "auditor")
    agent = gateway.key("p1", "agent")
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
