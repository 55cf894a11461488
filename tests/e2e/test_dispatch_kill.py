"""SIGKILL the engine while it dispatches: no phase is assigned twice at once, no task is lost.

The engine runs as the split process ``python -m chorus.cli engine`` against a real
nats-server and an SQLite store. Three plain nats-py agents (an inbox subscription, a
heartbeat, command requests re-sent with the same id until answered) take every phase
task they get; the engine is killed with SIGKILL twice while workflows are being
dispatched, and restarted. Afterwards every workflow has completed, each phase has exactly
one completion, and no phase ever had a second attempt assigned while one was live.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from chorus.natsd import NatsServer
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .conftest import (
    EngineProcess,
    async_wait_until,
    domain_events,
    read_store,
    request_until_answered,
    sqlite_url,
)

pytestmark = pytest.mark.kill

AGENTS = ["kill-a", "kill-b", "kill-c"]
WORKFLOWS = 12
#: Kill the engine when this many phase tasks have been taken.
KILL_AFTER = (4, 11)


@pytest.fixture
def engine_proc(natsd: NatsServer, tmp_path: Path) -> Iterator[EngineProcess]:
    proc = EngineProcess(natsd.url, sqlite_url(tmp_path / "events.db"), tmp_path / "engine")
    proc.start()
    try:
        yield proc
    finally:
        proc.terminate()


class Agent:
    """Takes each phase task once per attempt: accepts it, completes it."""

    def __init__(self, nc: NATS, name: str) -> None:
        self.nc = nc
        self.name = name
        self.taken: set[tuple[str, int]] = set()
        self.jobs: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.nc.subscribe(f"chorus.task.{self.name}", cb=self._got)
        await self._command("agent", "register", f"register:{self.name}", {"name": self.name})
        self.jobs.add(asyncio.create_task(self._beat()))

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.nc.publish(f"chorus.cmd.{self.name}.agent.heartbeat", b"")
            await asyncio.sleep(0.5)

    async def _got(self, msg: Msg) -> None:
        task = json.loads(msg.data)
        key = (task["task_id"], task.get("attempt", 0))
        if task["kind"] != "phase" or key in self.taken:
            return
        self.taken.add(key)
        job = asyncio.create_task(self._run(task))
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)

    async def _run(self, task: dict[str, Any]) -> None:
        ref = f"{task['task_id']}:{task['attempt']}"
        accepted = await self._command("task", "accept", f"accept:{ref}",
                                       {"task_id": task["task_id"]})  # fmt: skip
        if accepted["status"] == "rejected":
            return  # lost meanwhile (the engine was down past the lease): the work moved on
        await self._command("workflow", "complete_phase", f"done:{ref}", {
            "workflow_id": task["workflow_id"], "phase": task["phase"],
            "result": {"by": self.name, "attempt": task["attempt"]}})  # fmt: skip

    async def _command(self, aggregate: str, command: str, cid: str, payload: Any) -> Any:
        subject = f"chorus.cmd.{self.name}.{aggregate}.{command}"
        return await request_until_answered(self.nc, subject,
                                            {"command_id": cid, "payload": payload})  # fmt: skip

    async def stop(self) -> None:
        for job in list(self.jobs):
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job


async def test_sigkill_during_dispatch_loses_no_task_and_never_assigns_a_phase_twice(
    natsd: NatsServer, engine_proc: EngineProcess
) -> None:
    nc = await nats.connect(natsd.url)
    agents = [Agent(nc, name) for name in AGENTS]
    try:
        for agent in agents:
            await agent.start()
        wids = [str(uuid.uuid4()) for _ in range(WORKFLOWS)]
        for wid in wids:
            reply = await request_until_answered(
                nc, "chorus.cmd.ops.workflow.start",
                {"command_id": f"start:{wid}", "payload": {
                    "workflow_id": wid, "requirements": "x", "workflow_type": "quick"}},
            )  # fmt: skip
            assert reply["status"] in ("accepted", "duplicate"), reply
        for kill_after in KILL_AFTER:

            async def taken(n: int = kill_after) -> bool:
                return sum(len(a.taken) for a in agents) >= n

            await async_wait_until(taken, 60, f"{kill_after} tasks taken")
            engine_proc.kill()
            engine_proc.start()

        async def all_completed() -> bool:
            records = domain_events(read_store(engine_proc.database_url))
            return sum(r.type == "WorkflowCompleted" for r in records) == WORKFLOWS

        await async_wait_until(all_completed, 120, "every workflow completed")
    finally:
        for agent in agents:
            await agent.stop()
        await nc.close()
    assert engine_proc.terminate() is not None, engine_proc.log()

    records = domain_events(read_store(engine_proc.database_url))
    by_phase: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for record in records:
        if record.aggregate == "workflow" and "phase" in record.data:
            by_phase[(record.aggregate_id, record.data["phase"])].append(record)
    assert len(by_phase) == 2 * WORKFLOWS  # quick: implement, test
    for key, events in by_phase.items():
        live = 0
        for event in events:
            if event.type == "PhaseAssigned":
                live += 1
                assert live == 1, (key, [e.type for e in events])
            elif event.type in ("PhaseLeaseExpired", "PhaseCompleted"):
                live = 0
        assert [e.type for e in events].count("PhaseCompleted") == 1, key
