"""A participant cannot copy another's result: it sees only its own until the session closes.

The reviewer's reproduction: agent-1 read ``GET /sessions/{id}`` (which showed agent-2's
result and hash), resubmitted agent-2's answer and was verified with agreement 1.0. Now
the state, the list and the live feed show an agent participant only its own result while
the session is open; the session's opener and coordinator (when not participants),
operators, admins and auditors see every result, and everyone sees them once it closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from tests.integration.test_gateway_support import (
    SESSIONS,
    drain_until_pong,
    get_session,
    open_session,
    recv_events,
    submit,
)

ANSWER = {"answer": 42}


@pytest.fixture
async def http(engine: Any, projector: Any, gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        yield client


async def test_a_participant_sees_no_other_result_until_the_session_closes(http, gateway):
    ops, a1, a2 = gateway.key("ops", "operator"), gateway.key("agent-1"), gateway.key("agent-2")
    sid = await open_session(
        http, ops, ["agent-1", "agent-2"], task={"description": "t", "criteria": {
            "require": "all", "agree_on": "output_hash"}},
    )  # fmt: skip
    assert (await submit(http, a2, sid, ANSWER, output_hash="sha256:right")).status_code == 200

    seen = await get_session(http, a1, sid)
    assert seen["results"] == {} and seen["pending"] == ["agent-1"]
    listed = (await http.get(SESSIONS, params={"participant": "agent-1"}, headers=a1)).json()
    assert [s["results"] for s in listed["items"]] == [{}]
    own = await get_session(http, a2, sid)
    assert list(own["results"]) == ["agent-2"]
    assert list((await get_session(http, ops, sid))["results"]) == ["agent-2"]

    url = f"{gateway.ws_url}{SESSIONS}/{sid}/feed?since=0"
    async with websockets.connect(url, additional_headers=a1) as ws:
        _, submitted = await recv_events(ws, 2)
        await drain_until_pong(ws)
    assert submitted["type"] == "ResultSubmitted" and submitted["data"]["agent_id"] == "agent-2"
    assert "result" not in submitted["data"] and "output_hash" not in submitted["data"]
    assert submitted["data"]["hidden"] is True

    assert (await submit(http, a1, sid, {"mine": 1}, output_hash="sha256:mine")).status_code == 200
    closed = await get_session(http, a1, sid)
    assert closed["status"] == "failed"  # no agreement: nothing was copied
    assert closed["results"]["agent-2"]["result"] == ANSWER


async def test_the_opener_who_is_not_a_participant_sees_every_result(http, gateway):
    owner, bob = gateway.key("owner"), gateway.key("bob")
    sid = await open_session(http, owner, ["bob", "carol"])
    assert (await submit(http, bob, sid, {"words": 7})).status_code == 200
    assert (await get_session(http, owner, sid))["results"]["bob"]["result"] == {"words": 7}
    assert (await get_session(http, gateway.key("carol"), sid))["results"] == {}
