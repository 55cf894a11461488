"""Work reaches agents: phases dispatched to plain nats-py subscribers on a real nats-server.

The agents here use nothing of Chorus but its subjects: a core-NATS subscription on
``chorus.task.<id>`` and command requests. No timed assertions: each step waits for what
it needs (``eventually``) and asserts on what was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from chorus.bootstrap import EngineService
from chorus.contracts.workflow_types import (
    BUILT_IN,
    Backoff,
    Phase,
    WorkflowType,
    WorkflowTypeRegistry,
)
from chorus.engine.adapters.liveness import LivenessConfig
from chorus.engine.policies.dispatch import DispatchConfig
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError

from tests.conftest import NatsEndpoint, engine_config
from tests.integration.test_bus import domain_records, send
from tests.integration.test_bus_agents import eventually, register

LEASED = WorkflowType(
    name="leased",
    phases=[
        Phase(name="build", lease_seconds=1, max_attempts=3, backoff=Backoff(initial_seconds=0)),
        Phase(name="check", capabilities=["review"]),
    ],
)


class Inbox:
    """A plain agent's inbox: every message received on ``chorus.task.<agent>``; while
    ``beating``, it also heartbeats like a live agent process."""

    def __init__(self, nc: NATS, agent: str) -> None:
        self.nc = nc
        self.agent = agent
        self.messages: list[dict[str, Any]] = []
        self.beating: asyncio.Task[None] | None = None

    async def open(self, beat: bool = True) -> Inbox:
        async def got(msg: Msg) -> None:
            self.messages.append(json.loads(msg.data))

        self.sub = await self.nc.subscribe(f"chorus.task.{self.agent}", cb=got)
        if beat:
            self.beating = asyncio.create_task(self._beat())
            OPEN.append(self)
        return self

    async def _beat(self) -> None:
        while True:
            try:
                await self.nc.publish(f"chorus.cmd.{self.agent}.agent.heartbeat", b"")
            except ConnectionClosedError:  # the test's connection may close first
                return
            await asyncio.sleep(0.05)

    async def stop_beating(self) -> None:
        if self.beating is not None:
            self.beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.beating
            self.beating = None

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["kind"] == kind]


async def workflow(nc: NATS, actor: str, command: str, payload: dict[str, Any]) -> dict[str, Any]:
    return await send(nc, actor, command, payload, aggregate="workflow")


async def start(nc: NATS, workflow_type: str = "quick", priority: str = "normal") -> str:
    wid = str(uuid.uuid4())
    reply = await workflow(nc, "ops", "start", {"workflow_id": wid, "requirements": "ship it",
                                                "workflow_type": workflow_type,
                                                "priority": priority})  # fmt: skip
    assert reply["status"] == "accepted"
    return wid


def types_of(database_url: str, aggregate_id: str) -> list[str]:
    return [r.type for r in domain_records(database_url) if r.aggregate_id == aggregate_id]


OPEN: list[Inbox] = []


@pytest.fixture
async def dispatching(
    nats_server: NatsEndpoint, database_url: str, tmp_path: Path
) -> AsyncIterator[EngineService]:
    """An engine that re-sends unacknowledged tasks quickly and notices silent agents soon."""
    config = engine_config(
        nats_url=nats_server.url, database_url=database_url,
        workflow_types=WorkflowTypeRegistry([*BUILT_IN, LEASED]),
        dispatch_config=DispatchConfig(redeliver_seconds=0.05),
        liveness_config=LivenessConfig(interval=0.2, missed=2),
    )  # fmt: skip
    service = EngineService(config)
    await service.start()
    try:
        yield service
    finally:
        while OPEN:
            await OPEN.pop().stop_beating()
        await service.stop()


async def run_phases(nc: NATS, inbox: Inbox, done: set[str]) -> None:
    """The agent's loop: accept each new phase task, complete it naming its inputs."""
    handled = {(m["task_id"], m["attempt"]) for m in inbox.of_kind("phase")} & done
    for task in inbox.of_kind("phase"):
        key = f"{task['task_id']}#{task['attempt']}"
        if key in done or (task["task_id"], task["attempt"]) in handled:
            continue
        done.add(key)
        accepted = await send(nc, inbox.agent, "accept", {"task_id": task["task_id"]},
                              aggregate="task")  # fmt: skip
        assert accepted["status"] == "accepted", accepted
        result = {"phase": task["phase"], "saw": sorted(task["inputs"])}
        reply = await workflow(nc, inbox.agent, "complete_phase", {
            "workflow_id": task["workflow_id"], "phase": task["phase"], "result": result})  # fmt: skip
        assert reply["status"] == "accepted", reply


async def test_a_plain_subscriber_agent_gets_each_phase_and_completes_the_workflow(
    dispatching: EngineService, nc: NATS, database_url: str
) -> None:
    inbox = await Inbox(nc, "plain-1").open()
    assert (await register(nc, "plain-1"))["status"] == "accepted"
    wid = await start(nc, "quick")
    done: set[str] = set()

    async def finished() -> bool:
        await run_phases(nc, inbox, done)
        return "WorkflowCompleted" in types_of(database_url, wid)

    await eventually_async(finished)
    records = [r for r in domain_records(database_url) if r.aggregate_id == wid]
    assigned = [r for r in records if r.type == "PhaseAssigned"]
    assert [(r.data["phase"], r.data["agent_id"]) for r in assigned] == [
        ("implement", "plain-1"), ("test", "plain-1")]  # fmt: skip
    assert assigned[0].data["routing"]["chosen"] == ["plain-1"]
    final = next(r for r in records if r.type == "WorkflowCompleted").data["final_result"]
    assert final == {"phase": "test", "saw": ["implement"]}  # earlier results flowed forward
    second = next(m for m in inbox.of_kind("phase") if m["phase"] == "test")
    assert second["inputs"] == {"implement": {"phase": "implement", "saw": []}}


async def test_a_task_is_sent_again_until_the_agent_accepts_it(
    dispatching: EngineService, nc: NATS, database_url: str
) -> None:
    inbox = await Inbox(nc, "slow-1").open()
    await register(nc, "slow-1")
    wid = await start(nc, "review")
    await eventually(lambda: len(inbox.of_kind("phase")) >= 3)
    copies = inbox.of_kind("phase")
    assert {(m["task_id"], m["attempt"]) for m in copies} == {(f"{wid}/review", 1)}
    reply = await send(nc, "slow-1", "accept", {"task_id": f"{wid}/review"}, aggregate="task")
    assert reply["status"] == "accepted"
    assert types_of(database_url, wid)[-2:] == ["TaskAccepted", "PhaseStarted"]
    again = await send(nc, "slow-1", "accept", {"task_id": f"{wid}/review"}, aggregate="task")
    assert again["status"] == "accepted"  # harmless, records nothing
    assert types_of(database_url, wid)[-1] == "PhaseStarted"


async def test_another_agent_cannot_accept_or_report_on_a_task_it_does_not_hold(
    dispatching: EngineService, nc: NATS
) -> None:
    await register(nc, "holder")
    inbox = await Inbox(nc, "holder").open()
    wid = await start(nc, "review")
    await eventually(lambda: inbox.of_kind("phase"))
    thief = await send(nc, "thief", "accept", {"task_id": f"{wid}/review"}, aggregate="task")
    assert thief["error"]["code"] == "not_assigned"
    report = await workflow(nc, "thief", "complete_phase",
                            {"workflow_id": wid, "phase": "review", "result": {}})  # fmt: skip
    assert report["status"] == "rejected"


async def test_nobody_qualified_means_waiting_until_a_qualified_agent_registers(
    dispatching: EngineService, nc: NATS, database_url: str
) -> None:
    wid = await start(nc, "leased")
    await eventually(lambda: "PhaseWaiting" in types_of(database_url, wid))
    inbox = await Inbox(nc, "builder").open()
    await register(nc, "builder")
    await eventually(lambda: inbox.of_kind("phase"))
    await send(nc, "builder", "accept", {"task_id": f"{wid}/build"}, aggregate="task")
    await workflow(nc, "builder", "complete_phase",
                   {"workflow_id": wid, "phase": "build", "result": {"ok": True}})  # fmt: skip
    waiting = [r for r in domain_records(database_url)
               if r.aggregate_id == wid and r.type == "PhaseWaiting"]  # fmt: skip
    await eventually(lambda: len([r for r in domain_records(database_url)
                                  if r.aggregate_id == wid and r.type == "PhaseWaiting"]) == 2)  # fmt: skip
    last = [r for r in domain_records(database_url)
            if r.aggregate_id == wid and r.type == "PhaseWaiting"][-1]  # fmt: skip
    assert waiting[0].data["capabilities"] == []
    assert (last.data["phase"], last.data["capabilities"]) == ("check", ["review"])


async def test_a_lost_lease_moves_the_phase_to_another_agent_and_the_late_report_is_lease_lost(
    dispatching: EngineService, nc: NATS, database_url: str
) -> None:
    slow = await Inbox(nc, "a-slow").open()
    fast = await Inbox(nc, "b-fast").open()
    await register(nc, "a-slow")
    wid = await start(nc, "leased")
    await eventually(lambda: slow.of_kind("phase"))
    assert (await send(nc, "a-slow", "accept", {"task_id": f"{wid}/build"},
                       aggregate="task"))["status"] == "accepted"  # fmt: skip
    await register(nc, "b-fast")  # then a-slow goes quiet past its one-second lease
    await eventually(lambda: fast.of_kind("phase"), timeout=30)
    task = fast.of_kind("phase")[0]
    assert task["attempt"] == 2
    done = await workflow(nc, "b-fast", "complete_phase",
                          {"workflow_id": wid, "phase": "build", "result": {"by": "b-fast"}})  # fmt: skip
    assert done["status"] == "accepted"
    late = await workflow(nc, "a-slow", "complete_phase",
                          {"workflow_id": wid, "phase": "build", "result": {"by": "a-slow"}})  # fmt: skip
    assert late["error"]["code"] == "lease_lost"
    records = domain_records(database_url)
    expired = [r for r in records if r.aggregate_id == wid and r.type == "PhaseLeaseExpired"]
    assert [(r.data["agent_id"], r.data["attempt"]) for r in expired] == [("a-slow", 1)]
    completed = [r.data["result"] for r in records
                 if r.aggregate_id == wid and r.type == "PhaseCompleted"]  # fmt: skip
    assert completed == [{"by": "b-fast"}]
    await eventually(lambda: slow.of_kind("cancel"))
    assert slow.of_kind("cancel")[0]["task_id"] == f"{wid}/build"
    await eventually(lambda: any(r.type == "TaskLeaseLost" for r in domain_records(database_url)))


async def test_an_agent_that_was_offline_gets_its_task_when_it_is_back(
    dispatching: EngineService, nc: NATS, database_url: str
) -> None:
    await register(nc, "sleepy")  # online, but its process is not listening, and never beats
    wid = await start(nc, "review")
    await eventually(lambda: "PhaseLeaseExpired" in types_of(database_url, wid), timeout=30)
    inbox = await Inbox(nc, "sleepy").open()  # back: listening and beating
    # (a copy of attempt 1 sent just before its lease was ended may still arrive)
    await eventually(lambda: [m for m in inbox.of_kind("phase") if m["attempt"] == 2], timeout=30)
    assert {(m["task_id"], m["attempt"]) for m in inbox.of_kind("phase")} <= {
        (f"{wid}/review", 1), (f"{wid}/review", 2)}  # fmt: skip
    expired = next(r for r in domain_records(database_url) if r.type == "PhaseLeaseExpired")
    assert expired.data["reason"] == "agent_offline"


async def test_cancelling_a_workflow_sends_a_cancel_and_refuses_later_reports(
    dispatching: EngineService, nc: NATS
) -> None:
    inbox = await Inbox(nc, "worker").open()
    await register(nc, "worker")
    wid = await start(nc, "review")
    await eventually(lambda: inbox.of_kind("phase"))
    await send(nc, "worker", "accept", {"task_id": f"{wid}/review"}, aggregate="task")
    assert (await workflow(nc, "ops", "cancel", {"workflow_id": wid}))["status"] == "accepted"
    await eventually(lambda: inbox.of_kind("cancel"))
    assert inbox.of_kind("cancel")[0]["task_id"] == f"{wid}/review"
    late = await workflow(nc, "worker", "complete_phase",
                          {"workflow_id": wid, "phase": "review", "result": {}})  # fmt: skip
    assert late["error"]["code"] == "workflow_closed"


async def test_routed_session_participants_learn_of_it_through_their_inbox(
    dispatching: EngineService, nc: NATS
) -> None:
    inboxes = [await Inbox(nc, f"reviewer-{i}").open() for i in range(2)]
    for inbox in inboxes:
        await register(nc, inbox.agent, ["review"])
    sid = str(uuid.uuid4())
    opened = await send(nc, "ops", "open", {"session_id": sid, "task": {"description": "look"},
                                            "capabilities": ["review"], "size": 2})  # fmt: skip
    assert opened["status"] == "accepted"
    for inbox in inboxes:
        await eventually(lambda inbox=inbox: inbox.of_kind("session"))  # type: ignore[misc]
        task = inbox.of_kind("session")[0]
        assert (task["task_id"], task["session_id"], task["description"]) == (sid, sid, "look")
        reply = await send(nc, inbox.agent, "accept", {"task_id": sid}, aggregate="task")
        assert reply["status"] == "accepted"


async def eventually_async(check: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)
