"""Workflows end to end: ``chorus up --workflow-types`` driven by an operator and a scripted
fleet of agents, and delegated phases surviving SIGKILLs of a split engine.

Agents are raw nats-py clients sending workflow and session commands on their own
subjects, re-sending each command with the same ``command_id`` until it is answered. The
operator uses the HTTP API with the admin key from the banner.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from chorus.engine.policies.delegation import delegated_session_id
from chorus.natsd import NatsServer
from nats.aio.client import Client as NATS

from . import conftest as e2e
from .conftest import (
    EngineProcess,
    async_wait_until,
    cli,
    domain_events,
    free_port,
    read_store,
    request_until_answered,
    running_chorus,
    sqlite_url,
    submit_body,
)

AGENTS = ["agent-1", "agent-2", "agent-3"]
WORKFLOWS = "/api/v1/workflows"

TYPES_TOML = """
[[workflow_types]]
name = "full-reviewed"
description = "From requirements to a change reviewed by three agents"

[[workflow_types.phases]]
name = "requirements"
expected_seconds = 60

[[workflow_types.phases]]
name = "design"
expected_seconds = 60

[[workflow_types.phases]]
name = "implement"
expected_seconds = 60

[[workflow_types.phases]]
name = "test"
expected_seconds = 60

[[workflow_types.phases]]
name = "review"
expected_seconds = 60

[workflow_types.phases.delegate]
participants = ["agent-1", "agent-2", "agent-3"]
criteria = { require = "majority" }
timeout_seconds = 600

[[workflow_types]]
name = "delegated-first"
description = "A delegated review, then a release"

[[workflow_types.phases]]
name = "review"
expected_seconds = 60

[workflow_types.phases.delegate]
participants = ["agent-1", "agent-2", "agent-3"]
criteria = { require = "majority" }
timeout_seconds = 600

[[workflow_types.phases]]
name = "release"
expected_seconds = 60
"""


def write_types(directory: Path) -> Path:
    path = (directory / "workflow-types.toml").resolve()
    path.write_text(TYPES_TOML)
    return path


# Bus helpers ------------------------------------------------------------------------------------


async def workflow_cmd(
    nc: NATS, actor: str, command: str, command_id: str, **payload: Any
) -> dict[str, Any]:
    """One workflow command, re-sent with the same id until answered."""
    body = {"command_id": command_id, "payload": payload}
    return await request_until_answered(
        nc, f"chorus.cmd.{actor}.workflow.{command}", body, timeout=5, give_up_after=60
    )


async def accepted(
    nc: NATS, actor: str, command: str, command_id: str, **payload: Any
) -> dict[str, Any]:
    reply = await workflow_cmd(nc, actor, command, command_id, **payload)
    assert reply["status"] == "accepted", (actor, command, payload, reply)
    return reply


async def submit_when_open(
    nc: NATS, agent: str, session_id: str, success: bool, timeout: float = 60
) -> dict[str, Any]:
    """Submit a result to a delegated session, retrying while it does not exist yet.

    A ``session_not_found`` rejection records nothing, so the next try uses a fresh id;
    unanswered tries are re-sent with the same id by ``request_until_answered``.
    """
    attempt = 0

    async def try_once() -> dict[str, Any] | None:
        nonlocal attempt
        attempt += 1
        body = submit_body(
            f"submit-{agent}-{session_id}-{attempt}",
            session_id,
            {"agent": agent, "ok": success},
            success=success,
        )
        reply = await request_until_answered(
            nc, f"chorus.cmd.{agent}.session.submit_result", body, timeout=5, give_up_after=60
        )
        if reply["status"] == "rejected" and (reply.get("error") or {}).get("code") == (
            "session_not_found"
        ):
            return None
        return reply

    return await async_wait_until(
        try_once, timeout, f"{agent} to submit to {session_id}", interval=0.1
    )


# 1. chorus up: three workflows through HTTP and the bus -------------------------------------------


async def wait_workflow(
    http: httpx.AsyncClient, wid: str, status: str, timeout: float = 30
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def reached() -> dict[str, Any] | None:
        nonlocal last
        response = await http.get(f"{WORKFLOWS}/{wid}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        last = dict(response.json())
        return last if last["status"] == status else None

    try:
        return await async_wait_until(reached, timeout, f"workflow {wid} to be {status}", 0.1)
    except AssertionError as error:
        raise AssertionError(f"{error}; last view: {last}") from None


async def start_over_http(http: httpx.AsyncClient, workflow_type: str, key: str) -> str:
    """POST /api/v1/workflows; retried with the same Idempotency-Key while no engine answers."""

    async def attempt() -> str | None:
        response = await http.post(
            WORKFLOWS,
            json={"requirements": f"e2e {key}", "workflow_type": workflow_type, "priority": "high"},
            headers={"Idempotency-Key": key},
        )
        if response.status_code == 503:
            return None
        assert response.status_code == 202, response.text
        return str(response.json()["workflow_id"])

    return await async_wait_until(attempt, 60, f"workflow {key} to start", interval=0.2)


@pytest.mark.e2e
async def test_workflows_complete_fail_and_cancel_under_chorus_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    types_file = write_types(tmp_path)
    # ChorusUp runs ``cli("up", ...)``: add the flag an operator would pass.
    monkeypatch.setattr(
        e2e,
        "cli",
        lambda *args: (
            cli(*args, "--workflow-types", str(types_file)) if args[:1] == ("up",) else cli(*args)
        ),
    )
    data_dir = tmp_path / "data"
    workdir = tmp_path / "work"
    workdir.mkdir()
    with running_chorus(data_dir, free_port(), workdir) as up:
        assert up.nats_url and up.admin_key, up.output
        headers = {"Authorization": f"Bearer {up.admin_key}"}
        agents = {a: await up.bus(a, name=f"e2e-{a}") for a in AGENTS}
        admin = await up.bus("admin", up.admin_key, name="e2e-admin")
        try:
            async with httpx.AsyncClient(
                base_url=up.base_url, headers=headers, timeout=30, trust_env=False
            ) as http:
                types = (await http.get("/api/v1/workflow-types")).json()["items"]
                assert "full-reviewed" in [t["name"] for t in types]

                # A: every phase run by an agent, the review delegated to all three.
                wid_a = await start_over_http(http, "full-reviewed", "wf-a")
                sid = delegated_session_id(wid_a, "review")
                for index, phase in enumerate(["requirements", "design", "implement", "test"]):
                    agent = AGENTS[index % len(AGENTS)]
                    nc = agents[agent]
                    base = f"a-{phase}"
                    await accepted(admin, "admin", "start_phase", f"{base}-start",
                                   workflow_id=wid_a, phase=phase, assignee=agent)  # fmt: skip
                    await accepted(nc, agent, "report_progress", f"{base}-progress",
                                   workflow_id=wid_a, phase=phase, progress=50)  # fmt: skip
                    await accepted(nc, agent, "complete_phase", f"{base}-complete",
                                   workflow_id=wid_a, phase=phase, result={"phase": phase})  # fmt: skip
                await accepted(admin, "admin", "start_phase", "a-review-start",
                               workflow_id=wid_a, phase="review")  # fmt: skip
                # The dissenting vote first, so that no submission can meet a closed session.
                for agent, success in (("agent-3", False), ("agent-1", True), ("agent-2", True)):
                    reply = await submit_when_open(agents[agent], agent, sid, success)
                    assert reply["status"] == "accepted", (agent, reply)
                done = await wait_workflow(http, wid_a, "completed")
                assert done["progress"] == 100
                assert done["phases_completed"] == [
                    "requirements", "design", "implement", "test", "review"
                ]  # fmt: skip
                assert done["errors"] == []
                assert done["final_result"]["session_id"] == sid
                assert done["final_result"]["outcome"] == "succeeded"

                # B: the first phase fails.
                wid_b = await start_over_http(http, "quick", "wf-b")
                nc1 = agents["agent-1"]
                await accepted(admin, "admin", "start_phase", "b-start",
                               workflow_id=wid_b, phase="implement", assignee="agent-1")  # fmt: skip
                await accepted(nc1, "agent-1", "fail_phase", "b-fail", workflow_id=wid_b,
                               phase="implement",
                               error={"code": "build_broken", "message": "does not compile"})  # fmt: skip
                failed = await wait_workflow(http, wid_b, "failed")
                assert failed["errors"] == [
                    {"phase": "implement", "code": "build_broken", "message": "does not compile"}
                ]
                assert failed["phases_completed"] == []

                # C: cancelled by the operator.
                wid_c = await start_over_http(http, "full-reviewed", "wf-c")
                cancelled = await http.post(
                    f"{WORKFLOWS}/{wid_c}/cancel",
                    json={"reason": "dropped"},
                    headers={"Idempotency-Key": "wf-c-cancel"},
                )
                assert cancelled.status_code == 200, cancelled.text
                assert cancelled.json()["status"] == "cancelled"
                assert (await wait_workflow(http, wid_c, "cancelled"))["status"] == "cancelled"

                # Exactly one session for A's review, and it is the derived one.
                listed = await http.get("/api/v1/sessions", params={"participant": "agent-1"})
                assert listed.status_code == 200, listed.text
                items = listed.json()["items"]
                assert [s["session_id"] for s in items] == [sid], items
                assert items[0]["status"] == "succeeded"
                assert sorted(items[0]["participants"]) == AGENTS
        finally:
            for nc in (*agents.values(), admin):
                await nc.close()

        records = domain_events(read_store(sqlite_url(data_dir / "events.db")))
        opened = [r for r in records if r.type == "SessionOpened"]
        assert [r.aggregate_id for r in opened] == [sid]
        of_a = [r for r in records if r.aggregate_id == wid_a]
        assert [r.version for r in of_a] == list(range(1, len(of_a) + 1))
        assert [r.data.get("phase") for r in of_a if r.type == "PhaseCompleted"] == [
            "requirements", "design", "implement", "test", "review"
        ]  # fmt: skip
        assert [r.type for r in of_a][-1] == "WorkflowCompleted"


# 2. SIGKILL the engine around a delegated phase ---------------------------------------------------


@pytest.fixture
def workflow_engine(natsd: NatsServer, tmp_path: Path) -> Iterator[EngineProcess]:
    """The split engine, also told about the operator's workflow types."""
    engine = EngineProcess(
        natsd.url,
        sqlite_url(tmp_path / "events.db"),
        tmp_path / "engine",
        CHORUS_WORKFLOW_TYPES=str(write_types(tmp_path)),
    )
    try:
        yield engine
    finally:
        engine.terminate()


def phase_completions(database_url: str, wid: str, phase: str) -> list[Any]:
    return [
        r
        for r in domain_events(read_store(database_url))
        if r.aggregate_id == wid and r.type == "PhaseCompleted" and r.data.get("phase") == phase
    ]


@pytest.mark.e2e
@pytest.mark.kill
async def test_delegated_phase_survives_engine_kills_exactly_once(
    natsd: NatsServer, workflow_engine: EngineProcess
) -> None:
    engine = workflow_engine
    db = engine.database_url
    engine.start()
    nc = await nats.connect(natsd.url, name="e2e-workflow-kill", max_reconnect_attempts=-1)
    scenarios: list[tuple[str, str]] = []
    observed: list[str] = []  # which side of each kill the work landed on (printed)

    async def opened(sid: str) -> bool:
        records = await asyncio.to_thread(read_store, db)
        return any(r.aggregate_id == sid and r.type == "SessionOpened" for r in records)

    try:
        # Kill right after the reply, a little later, or once the delegation manager (which
        # polls every 0.1 s) has most likely acted: the session / the phase completion may or
        # may not have been recorded when the engine dies.
        for round_, delay in enumerate((0.0, 0.05, 0.5)):
            wid = str(uuid.uuid4())
            sid = delegated_session_id(wid, "review")
            scenarios.append((wid, sid))
            await accepted(nc, "ops", "start", f"k{round_}-start", workflow_id=wid,
                           requirements="kill me", workflow_type="delegated-first")  # fmt: skip
            await accepted(nc, "ops", "start_phase", f"k{round_}-review",
                           workflow_id=wid, phase="review")  # fmt: skip
            await asyncio.sleep(delay)
            engine.kill()
            observed.append(f"round {round_}: opened before kill 1: {await opened(sid)}")
            engine.start()

            votes = (("agent-3", False), ("agent-1", True), ("agent-2", True))
            for agent, success in votes:
                reply = await submit_when_open(nc, agent, sid, success)
                assert reply["status"] in ("accepted", "duplicate"), (agent, reply)
            await asyncio.sleep(delay)
            engine.kill()
            done = bool(await asyncio.to_thread(phase_completions, db, wid, "review"))
            observed.append(f"round {round_}: completed before kill 2: {done}")
            engine.start()

            async def completed(wid: str = wid) -> bool:
                return bool(await asyncio.to_thread(phase_completions, db, wid, "review"))

            await async_wait_until(completed, 60, f"phase review of {wid} to complete", 0.1)

        # Give a late duplicate (a re-opened session, a second completion) time to show up.
        await asyncio.sleep(1.0)
        # The workflows go on: the next phase can start.
        for round_, (wid, _) in enumerate(scenarios):
            await accepted(nc, "ops", "start_phase", f"k{round_}-release",
                           workflow_id=wid, phase="release")  # fmt: skip
    finally:
        await nc.close()
        print("\n".join(observed))
    assert engine.terminate() is not None, engine.log()

    records = domain_events(read_store(db))
    by_aggregate: dict[str, list[Any]] = {}
    for record in records:
        by_aggregate.setdefault(record.aggregate_id, []).append(record)
    for aggregate_id, events in by_aggregate.items():
        versions = [r.version for r in events]
        assert versions == list(range(1, len(events) + 1)), (aggregate_id, versions)
    for wid, sid in scenarios:
        session_types = Counter(r.type for r in by_aggregate.get(sid, []))
        assert session_types["SessionOpened"] == 1, (sid, session_types)
        assert session_types["SessionFinalised"] == 1, (sid, session_types)
        completions = [
            r
            for r in by_aggregate[wid]
            if r.type == "PhaseCompleted" and r.data["phase"] == "review"
        ]
        assert len(completions) == 1, [json.dumps(r.data, default=str) for r in completions]
        assert completions[0].actor == "system"
        assert completions[0].data["result"]["session_id"] == sid
        assert completions[0].data["result"]["outcome"] == "succeeded"
        # (PhaseWaiting: the dispatcher found no agent for the next phase; not a transition)
        assert [r.type for r in by_aggregate[wid] if r.type != "PhaseWaiting"] == [
            "WorkflowStarted", "PhaseStarted", "PhaseCompleted", "PhaseStarted"
        ]  # fmt: skip
    assert engine.kills == 6
