"""Helpers shared by the gateway integration tests (this module holds no tests).

It is named ``test_gateway_*`` only so that it sits with the gateway tests it serves.
Every helper talks to a real gateway (uvicorn) over HTTP or WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

SESSIONS = "/api/v1/sessions"
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "instance", "request_id"}
UNKNOWN_SESSION = "00000000-0000-4000-8000-000000000000"


def task(description: str = "count the words", **criteria: Any) -> dict[str, Any]:
    """A task body; keyword arguments become its criteria."""
    body: dict[str, Any] = {"description": description}
    if criteria:
        body["criteria"] = criteria
    return body


def open_body(participants: list[str], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"participants": participants, "task": fields.pop("task", task())}
    body.update(fields)
    return body


async def open_session(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    participants: list[str],
    **fields: Any,
) -> str:
    """Open a session (asserting 201) and return its id."""
    response = await http.post(SESSIONS, json=open_body(participants, **fields), headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


async def submit(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    session_id: str,
    result: dict[str, Any] | None = None,
    **fields: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"result": result if result is not None else {"words": 3}, **fields}
    return await http.post(f"{SESSIONS}/{session_id}/results", json=body, headers=headers)


async def get_session(
    http: httpx.AsyncClient, headers: dict[str, str], session_id: str
) -> dict[str, Any]:
    response = await http.get(f"{SESSIONS}/{session_id}", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def get_events(
    http: httpx.AsyncClient, headers: dict[str, str], session_id: str
) -> list[dict[str, Any]]:
    response = await http.get(f"{SESSIONS}/{session_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "the condition",
) -> T:
    """Call ``probe`` until it returns something truthy (then return it) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: T = await probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s (last: {last!r})")
        await asyncio.sleep(interval)
        last = await probe()
    return last


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with ``status`` and ``code``; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = dict(response.json())
    assert body.keys() >= PROBLEM_FIELDS, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"].endswith(code)
    assert body["instance"] == response.request.url.path
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def problem_fields(body: dict[str, Any]) -> list[str]:
    """The field names in a validation problem's ``details.fields``."""
    return [f["field"] for f in body.get("details", {}).get("fields", [])]


def bearer(headers: dict[str, str]) -> str:
    """The raw API key in Authorization headers made by ``gateway.key``."""
    return headers["Authorization"].removeprefix("Bearer ")


def key_id(headers: dict[str, str]) -> str:
    """The key id of ``chk_<key id>_<secret>``."""
    return bearer(headers).split("_", 2)[1]


async def recv_json(ws: Any, timeout: float = 10.0) -> Any:
    """The next text frame, parsed (``pong`` is returned as the string ``"pong"``)."""
    frame = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(frame, str), frame
    return frame if frame == "pong" else json.loads(frame)


async def recv_events(ws: Any, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next ``count`` event frames (fails on anything else)."""
    events = []
    for _ in range(count):
        frame = await recv_json(ws, timeout)
        assert isinstance(frame, dict) and "position" in frame, frame
        events.append(frame)
    return events


async def drain_until_pong(ws: Any, timeout: float = 10.0) -> list[Any]:
    """Send ``ping`` and return every frame that arrived before the ``pong``."""
    await ws.send("ping")
    before = []
    while (frame := await recv_json(ws, timeout)) != "pong":
        before.append(frame)
    return before
