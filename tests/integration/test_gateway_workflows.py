"""Workflows over HTTP, driven by agents on raw NATS (real gateway, engine, projector)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import websockets
from chorus.bootstrap import EngineService
from chorus.projections.runner import ProjectionRunner
from nats.aio.client import Client as NATS

from tests.conftest import Gateway, ReadStores
from tests.integration.test_bus import send

BASE = "/api/v1/workflows"


@pytest.fixture
def read_store_url(read_stores: ReadStores) -> str:
    """The gateway's read queries, on each read-store backend."""
    return read_stores.url("read")


async def agent(nc: NATS, actor: str, command: str, **payload: Any) -> dict[str, Any]:
    reply = await send(nc, actor, command, payload, aggregate="workflow")
    assert reply["status"] == "accepted", reply
    return reply


async def wait_for(
    http: httpx.AsyncClient, headers: dict[str, str], wid: str, check: Any, what: str
) -> dict[str, Any]:
    """The workflow's view once ``check`` holds (the read model follows the log)."""
    for _ in range(400):
        body: dict[str, Any] = (await http.get(f"{BASE}/{wid}", headers=headers)).json()
        if check(body):
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"workflow {wid}: {what} never showed: {body}")


async def wait_status(
    http: httpx.AsyncClient, headers: dict[str, str], wid: str, status: str
) -> dict[str, Any]:
    for _ in range(400):
        body: dict[str, Any] = (await http.get(f"{BASE}/{wid}", headers=headers)).json()
        if body.get("status") == status:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"workflow {wid} never reached {status}: {body}")


async def test_a_workflow_started_over_http_is_followed_phase_by_phase(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway, nc: NATS
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        started = await http.post(
            BASE,
            json={"requirements": "ship it", "workflow_type": "quick", "priority": "high"},
            headers=ops,
        )
        assert started.status_code == 202, started.text
        body = started.json()
        wid = body["workflow_id"]
        assert body["status"] == "queued"
        assert body["created_at"]
        assert body["estimated_completion"]
        await agent(
            nc, "ops", "start_phase", workflow_id=wid, phase="implement", assignee="agent-1"
        )
        await agent(
            nc, "agent-1", "report_progress", workflow_id=wid, phase="implement", progress=50
        )
        await agent(
            nc,
            "agent-1",
            "record_partial_result",
            workflow_id=wid,
            phase="implement",
            result={"files": 3},
        )
        running = await wait_for(
            http, ops, wid, lambda w: w["progress"] == 25 and w["partial_results"], "progress"
        )
        assert running["progress"] == 25
        assert running["current_phase"] == "implement"
        assert running["partial_results"] == {"implement": [{"files": 3}]}
        await agent(
            nc, "agent-1", "complete_phase", workflow_id=wid, phase="implement", result={"pr": 7}
        )
        await agent(nc, "ops", "start_phase", workflow_id=wid, phase="test", assignee="agent-2")
        await agent(
            nc, "agent-2", "complete_phase", workflow_id=wid, phase="test", result={"passed": 120}
        )
        done = await wait_status(http, ops, wid, "completed")
        assert done["progress"] == 100
        assert done["phases_completed"] == ["implement", "test"]
        assert done["final_result"] == {"passed": 120}
        assert done["estimated_completion"] is None
        alias = await http.get(f"/workflow-status/{wid}", headers=ops)
        assert alias.json()["status"] == "completed"
        auditor = gateway.key("auditor-1", "auditor")
        events = (await http.get(f"{BASE}/{wid}/events", headers=auditor)).json()["items"]
        assert [e["type"] for e in events][-2:] == ["PhaseCompleted", "WorkflowCompleted"]
        listed = (
            await http.get(BASE, params={"type": "quick", "status": "completed"}, headers=ops)
        ).json()
        assert [w["workflow_id"] for w in listed["items"]] == [wid]


async def test_a_failed_phase_shows_its_error_and_a_cancel_is_recorded(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway, nc: NATS
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        failing = (
            await http.post(
                "/execute-workflow",
                json={"requirements": "x", "workflow_type": "quick"},
                headers=ops,
            )
        ).json()
        wid = failing["workflow_id"]
        await agent(
            nc, "ops", "start_phase", workflow_id=wid, phase="implement", assignee="agent-1"
        )
        await agent(
            nc, "agent-1", "fail_phase", workflow_id=wid, phase="implement",
            error={"code": "build_broken", "message": "does not compile"},
        )  # fmt: skip
        failed = await wait_status(http, ops, wid, "failed")
        assert failed["errors"] == [
            {"phase": "implement", "code": "build_broken", "message": "does not compile"}
        ]
        other = (
            await http.post(BASE, json={"requirements": "y", "workflow_type": "full"}, headers=ops)
        ).json()
        cancelled = await http.post(
            f"{BASE}/{other['workflow_id']}/cancel", json={"reason": "dropped"}, headers=ops
        )
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"


async def test_bad_workflow_requests_are_problems_naming_what_is_wrong(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        unknown = await http.post(
            BASE, json={"requirements": "x", "workflow_type": "nope"}, headers=ops
        )
        assert unknown.status_code == 400
        assert unknown.json()["code"] == "unknown_workflow_type"
        assert "full" in unknown.json()["details"]["known"]
        priority = await http.post(
            BASE,
            json={"requirements": "x", "workflow_type": "quick", "priority": "urgent"},
            headers=ops,
        )
        assert priority.status_code == 400
        assert priority.json()["details"]["fields"][0]["allowed"] == [
            "low",
            "normal",
            "high",
            "critical",
        ]
        missing = await http.get(f"{BASE}/{uuid.uuid4()}", headers=ops)
        assert missing.status_code == 404
        assert missing.json()["code"] == "workflow_not_found"
        empty = await http.post(
            BASE, json={"requirements": "", "workflow_type": "quick"}, headers=ops
        )
        assert empty.status_code == 400


async def test_the_workflow_feed_catches_up_then_goes_live(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway, nc: NATS
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        wid = (
            await http.post(BASE, json={"requirements": "x", "workflow_type": "quick"}, headers=ops)
        ).json()["workflow_id"]
    async with websockets.connect(
        f"{gateway.ws_url}{BASE}/{wid}/feed?since=0", additional_headers=ops
    ) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await agent(
            nc, "ops", "start_phase", workflow_id=wid, phase="implement", assignee="agent-1"
        )
        seen = [first]
        while seen[-1]["type"] != "PhaseStarted":  # the dispatcher may record PhaseWaiting
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    assert first["type"] == "WorkflowStarted"
    assert [r["position"] for r in seen] == sorted({r["position"] for r in seen})


async def test_a_retried_start_and_cancel_say_they_were_replayed_and_keep_the_correlation_id(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    """Every command route takes Idempotency-Key and X-Correlation-Id the same way (one
    helper); a replay says so with ``Idempotent-Replayed``."""
    ops = {**gateway.key("ops", "operator"), "X-Correlation-Id": "corr-w"}
    auditor = gateway.key("auditor-1", "auditor")
    body = {"requirements": "x", "workflow_type": "quick"}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        first = await http.post(BASE, json=body, headers={**ops, "Idempotency-Key": "w-1"})
        retry = await http.post(BASE, json=body, headers={**ops, "Idempotency-Key": "w-1"})
        assert first.status_code == retry.status_code == 202
        assert "idempotent-replayed" not in first.headers
        assert retry.headers["idempotent-replayed"] == "true"
        wid = first.json()["workflow_id"]
        assert retry.json()["workflow_id"] == wid
        cancel = {**ops, "Idempotency-Key": "c-1"}
        cancelled = await http.post(f"{BASE}/{wid}/cancel", json={"reason": "r"}, headers=cancel)
        again = await http.post(f"{BASE}/{wid}/cancel", json={"reason": "r"}, headers=cancel)
        assert cancelled.status_code == again.status_code == 200
        assert "idempotent-replayed" not in cancelled.headers
        assert again.headers["idempotent-replayed"] == "true"
        events = (await http.get(f"{BASE}/{wid}/events", headers=auditor)).json()["items"]
    assert events[0]["type"] == "WorkflowStarted"
    assert events[-1]["type"] == "WorkflowCancelled"
    assert {e["correlation_id"] for e in (events[0], events[-1])} == {"corr-w"}


async def test_every_bad_choice_in_a_body_names_its_allowed_values_with_one_code(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway
) -> None:
    ops = gateway.key("ops", "operator")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        session = await http.post("/api/v1/sessions", headers=ops, json={
            "task": {"description": "d", "criteria": {"require": "most"}},
            "participants": ["a"], "on_participant_lost": "panic"})  # fmt: skip
        workflow = await http.post(
            BASE, json={"requirements": "x", "workflow_type": "quick", "priority": "asap"},
            headers=ops,
        )  # fmt: skip
    for response in (session, workflow):
        assert response.status_code == 400
        assert response.json()["code"] == "validation_error"
    (field,) = session.json()["details"]["fields"]
    assert field["field"] in ("on_participant_lost", "task.criteria.require")
    expected = {"on_participant_lost": ["wait", "fail_fast", "replace"],
                "task.criteria.require": ["all", "majority", "any"]}  # fmt: skip
    assert field["allowed"] == expected[field["field"]]
    assert workflow.json()["details"]["fields"][0]["allowed"] == ["low", "normal", "high",
                                                                  "critical"]  # fmt: skip
