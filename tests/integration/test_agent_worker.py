"""The SDK worker's edge: tasks in on the inbox, commands out, against a scripted engine.

Each test runs twice: on FastStream's in-memory ``TestNatsBroker``, and with
``with_real=True`` on a real nats-server, so the subscriber wiring is proven on the wire.
The engine here is a FastStream subscriber on ``chorus.cmd.>`` that records every command
and answers as told; the engine's own rules are tested with the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from chorus.agent_sdk import AgentClient
from chorus.agent_worker import Handler, TaskContext, TaskLost, Worker
from chorus.contracts.tasks import PhaseTask, SessionTask
from faststream.nats import NatsBroker, TestNatsBroker

from ..conftest import NatsEndpoint
from .fake_engine import AGENT, NOW, WAIT, FakeEngine, phase_task, session_task


@dataclass
class Rig:
    broker: NatsBroker
    engine: FakeEngine
    client: AgentClient
    serving: asyncio.Task[None] | None = None

    async def serve(self, handler: Handler, **options: Any) -> Worker:
        clock = options.pop("clock", lambda: NOW)
        options.setdefault("accept_after", 0)  # accept first: the order these tests check
        worker = Worker(self.client, self.broker, handler, clock=clock, **options)
        self.client._worker = worker  # what AgentClient.serve does, with this test's clock
        self.serving = asyncio.create_task(worker.run(capabilities=["python"]))
        await self.engine.until(lambda: self.engine.named("register") and self.engine.beats)
        return worker

    async def send(self, message: dict[str, Any]) -> None:
        await self.broker.publish(json.dumps(message, default=str).encode(),
                                  f"chorus.task.{AGENT}")  # fmt: skip

    async def stop(self) -> None:
        self.client.shutdown()
        if self.serving is not None:
            await asyncio.wait_for(self.serving, WAIT)


@pytest.fixture(params=["memory", "real"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    real = request.param == "real"
    endpoint: NatsEndpoint | None = request.getfixturevalue("nats_server") if real else None
    broker = NatsBroker(endpoint.url if endpoint else "nats://127.0.0.1:1", log_level=logging.DEBUG)
    engine = FakeEngine()
    async with TestNatsBroker(broker, with_real=real) as br:
        commands = br.subscriber("chorus.cmd.>", persistent=False)
        commands(engine.on_command)
        await commands.start()
        client = AgentClient(br, AGENT, heartbeat_interval=0.05, request_timeout=2)
        rig = Rig(br, engine, client)
        try:
            yield rig
        finally:
            if rig.serving is not None and not rig.serving.done():
                await rig.stop()
            await commands.stop()


# Phases -----------------------------------------------------------------------------------------


async def test_a_phase_is_accepted_reported_on_completed_and_claimed(rig: Rig) -> None:
    seen: list[PhaseTask | SessionTask] = []

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        seen.append(task)
        await ctx.progress(40)
        await ctx.partial({"draft": "def add(a, b): ..."})
        return {"module": "def add(a, b):\n    return a + b\n"}

    await rig.serve(handle, max_concurrency=2)
    register = rig.engine.named("register")[0].payload
    assert (register["capabilities"], register["max_concurrency"]) == (["python"], 2)
    task = phase_task()
    await rig.send(task)
    await rig.engine.until(lambda: rig.engine.named("verify_completions"))
    assert [(c.aggregate, c.command) for c in rig.engine.commands[1:]] == [
        ("task", "accept"), ("workflow", "report_progress"),
        ("workflow", "record_partial_result"), ("workflow", "complete_phase"),
        ("agent", "verify_completions"),
    ]  # fmt: skip
    accept, progress, partial, complete, claim = rig.engine.commands[1:]
    assert accept.payload == {"task_id": task["task_id"]}
    where = {"workflow_id": task["workflow_id"], "phase": "implement"}
    assert progress.payload == {**where, "progress": 40}
    assert partial.payload == {**where, "result": {"draft": "def add(a, b): ..."}}
    assert complete.payload == {**where, "result": {"module": "def add(a, b):\n    return a + b\n"}}
    assert [c["task_id"] for c in claim.payload["claims"]] == [task["task_id"]]
    assert isinstance(seen[0], PhaseTask) and seen[0].inputs == {"design": {"api": "add(a, b)"}}


async def test_an_exception_fails_the_phase_with_its_message(rig: Rig) -> None:
    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        raise ValueError("the requirements are contradictory")

    await rig.serve(handle)
    task = phase_task()
    await rig.send(task)
    await rig.engine.until(lambda: rig.engine.named("fail_phase"))
    fail = rig.engine.named("fail_phase")[0].payload
    assert fail == {"workflow_id": task["workflow_id"], "phase": "implement",
                    "error": {"code": "agent_error",
                              "message": "ValueError: the requirements are contradictory"}}  # fmt: skip
    assert not rig.engine.named("complete_phase", "verify_completions")


async def test_a_repeated_delivery_runs_the_handler_once(rig: Rig) -> None:
    release = asyncio.Event()
    runs = 0

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        await release.wait()
        return {}

    worker = await rig.serve(handle)
    task = phase_task()
    await rig.send(task)
    await rig.engine.until(lambda: rig.engine.named("accept"))
    await rig.send(task)  # the engine re-sends until it hears the accept
    release.set()
    await rig.engine.until(lambda: rig.engine.named("complete_phase"))
    await rig.send(task)  # a late repeat after the work is done
    await rig.stop()
    assert runs == 1
    assert len(rig.engine.named("accept")) == 1
    assert len(rig.engine.named("complete_phase")) == 1
    assert not worker.running


async def test_a_cancel_message_stops_the_handler_and_nothing_is_reported(rig: Rig) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    await rig.serve(handle)
    task = phase_task()
    await rig.send(task)
    await asyncio.wait_for(started.wait(), WAIT)
    await rig.send({"kind": "cancel", "task_id": task["task_id"], "reason": "workflow cancelled"})
    await asyncio.wait_for(cancelled.wait(), WAIT)
    await rig.stop()
    assert not rig.engine.named("complete_phase", "fail_phase", "verify_completions")


async def test_a_lost_lease_ends_the_attempt_without_a_report(rig: Rig) -> None:
    rig.engine.reject["report_progress"] = "lease_lost"
    lost: list[TaskLost] = []

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        try:
            await ctx.progress(10)
        except TaskLost as error:
            lost.append(error)
            raise
        return {}

    await rig.serve(handle)
    await rig.send(phase_task())
    await rig.engine.until(lambda: rig.engine.named("report_progress"))
    await rig.stop()
    assert [e.code for e in lost] == ["lease_lost"]
    assert not rig.engine.named("complete_phase", "fail_phase")


async def test_a_handler_past_its_lease_is_cancelled_and_reports_nothing(rig: Rig) -> None:
    cancelled = asyncio.Event()

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    await rig.serve(handle)
    await rig.send(phase_task(lease=-timedelta(seconds=1)))  # expired by the agent's clock
    await asyncio.wait_for(cancelled.wait(), WAIT)
    await rig.stop()
    assert rig.engine.named("accept")
    assert not rig.engine.named("complete_phase", "fail_phase")


async def test_a_refused_accept_runs_nothing(rig: Rig) -> None:
    rig.engine.reject["accept"] = "not_assigned"
    runs = 0

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        return {}

    worker = await rig.serve(handle)
    await rig.send(phase_task())
    await rig.engine.until(lambda: rig.engine.named("accept"))
    await rig.stop()
    assert runs == 0 and not worker.running


async def test_a_quick_handler_acknowledges_with_its_report_and_sends_no_accept(
    rig: Rig,
) -> None:
    """With a grace before accepting, a handler done within it needs no ``task.accept``:
    the completion acknowledges the task (one command fewer for the engine)."""

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        return {"ok": True}

    await rig.serve(handle, accept_after=30)
    await rig.send(phase_task())
    await rig.engine.until(lambda: rig.engine.named("verify_completions"))
    assert [(c.aggregate, c.command) for c in rig.engine.commands[1:]] == [
        ("workflow", "complete_phase"), ("agent", "verify_completions"),
    ]  # fmt: skip


async def test_claims_that_pile_up_go_out_in_one_command(rig: Rig) -> None:
    """Claims wait for others (``Claims.linger``); on shutdown the rest go out at once."""

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        return {"ok": True}

    worker = await rig.serve(handle, max_concurrency=3)
    worker.claims.linger = 3600  # nothing goes out before the shutdown's flush
    tasks = [phase_task() for _ in range(3)]
    for task in tasks:
        await rig.send(task)
    await rig.engine.until(lambda: len(rig.engine.named("complete_phase")) == 3)
    assert not rig.engine.named("verify_completions")
    await rig.stop()
    claims = rig.engine.named("verify_completions")
    assert len(claims) == 1 and claims[0].payload["agent_id"] == AGENT
    sent = {c["task_id"]: c for c in claims[0].payload["claims"]}
    assert set(sent) == {t["task_id"] for t in tasks}
    assert all(c["agent_id"] == AGENT and c["output_hash"].startswith("sha256:")
               for c in sent.values())  # fmt: skip


async def test_a_handler_still_running_after_the_grace_accepts_its_task(rig: Rig) -> None:
    release = asyncio.Event()

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        await release.wait()
        return {"ok": True}

    worker = await rig.serve(handle, accept_after=0.01)
    task = phase_task()
    await rig.send(task)
    async with asyncio.timeout(WAIT):
        while not getattr(worker.running.get(task["task_id"]), "accepted", False):
            await asyncio.sleep(0.01)
    assert [c.command for c in rig.engine.commands[1:]] == ["accept"]
    release.set()
    await rig.engine.until(lambda: rig.engine.named("verify_completions"))
    assert [c.command for c in rig.engine.commands[1:]] == [
        "accept", "complete_phase", "verify_completions",
    ]  # fmt: skip


async def test_a_refused_late_accept_stops_the_handler_and_reports_nothing(rig: Rig) -> None:
    rig.engine.reject["accept"] = "not_assigned"
    stopped = asyncio.Event()

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return {}

    worker = await rig.serve(handle, accept_after=0.01)
    await rig.send(phase_task())
    await asyncio.wait_for(stopped.wait(), WAIT)
    async with asyncio.timeout(WAIT):
        while worker.running:  # the job unwinds right after its handler
            await asyncio.sleep(0.01)
    assert not rig.engine.named("complete_phase", "fail_phase", "verify_completions")


async def test_a_full_agent_accepts_the_next_task_only_when_a_slot_frees(rig: Rig) -> None:
    release = asyncio.Event()

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        await release.wait()
        return {}

    worker = await rig.serve(handle, max_concurrency=1)
    first, second = phase_task(), phase_task()
    await rig.send(first)
    await rig.engine.until(lambda: rig.engine.named("accept"))
    await rig.send(second)
    await rig.engine.until(lambda: len(worker.running) == 2)
    assert [c.payload["task_id"] for c in rig.engine.named("accept")] == [first["task_id"]]
    release.set()
    await rig.engine.until(lambda: len(rig.engine.named("complete_phase")) == 2)
    assert [c.payload["task_id"] for c in rig.engine.named("accept")] == [
        first["task_id"], second["task_id"],
    ]  # fmt: skip


# Sessions ---------------------------------------------------------------------------------------


async def test_a_session_task_submits_the_result_and_an_exception_a_failed_one(rig: Rig) -> None:
    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        assert isinstance(task, SessionTask)
        await ctx.progress(50)  # sessions have no progress: nothing is sent
        if task.description == "explode":
            raise RuntimeError("cannot review")
        return {"verdict": "lgtm"}

    await rig.serve(handle, claim_completions=False)
    good, bad = session_task(), {**session_task(), "description": "explode"}
    await rig.send(good)
    await rig.send(bad)
    await rig.engine.until(lambda: len(rig.engine.named("submit_result")) == 2)
    submitted = {c.payload["session_id"]: c.payload for c in rig.engine.named("submit_result")}
    assert submitted[good["session_id"]] == {
        "session_id": good["session_id"], "result": {"verdict": "lgtm"}, "success": True,
    }  # fmt: skip
    assert submitted[bad["session_id"]]["success"] is False
    assert submitted[bad["session_id"]]["result"] == {"error": "RuntimeError: cannot review"}
    assert not rig.engine.named("report_progress", "verify_completions")


# Liveness and shutdown --------------------------------------------------------------------------


async def test_the_agent_answers_pings_while_it_serves(rig: Rig) -> None:
    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        return {}

    await rig.serve(handle)
    reply = await rig.broker.request(b"", f"chorus.agent.{AGENT}.ping", timeout=WAIT)
    assert json.loads(reply.body) == {"agent_id": AGENT}


async def test_shutdown_finishes_running_work_and_hands_back_what_does_not_finish(
    rig: Rig,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        started.set()
        if isinstance(task, PhaseTask) and task.requirements == "forever":
            await asyncio.Event().wait()
        await release.wait()
        return {"done": True}

    # Finished: the handler completes while the worker drains.
    await rig.serve(handle)
    await rig.send(phase_task())
    await asyncio.wait_for(started.wait(), WAIT)
    rig.client.shutdown()
    release.set()
    await asyncio.wait_for(rig.serving, WAIT)  # type: ignore[arg-type]
    assert len(rig.engine.named("complete_phase")) == 1

    # Handed back: the accepted phase is failed as handed back, so it moves on at once.
    started.clear()
    rig.serving = None
    worker = Worker(rig.client, rig.broker, handle, clock=lambda: NOW, accept_after=0)
    rig.client._worker = worker
    serving = asyncio.create_task(worker.run(capabilities=[], drain_timeout=0))
    await rig.engine.until(lambda: len(rig.engine.named("register")) == 2)
    await rig.send(phase_task(requirements="forever"))
    await asyncio.wait_for(started.wait(), WAIT)
    rig.client.shutdown()
    await asyncio.wait_for(serving, WAIT)
    assert len(rig.engine.named("complete_phase")) == 1
    [handed_back] = rig.engine.named("fail_phase")
    assert handed_back.payload["error"]["code"] == "handed_back"


async def test_keepalive_repeats_the_last_progress_while_the_handler_runs(rig: Rig) -> None:
    release = asyncio.Event()

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        await ctx.progress(30)
        await release.wait()
        return {}

    await rig.serve(handle, keepalive=True)
    await rig.send(phase_task(heartbeat_seconds=1))
    await rig.engine.until(lambda: len(rig.engine.named("report_progress")) >= 3)
    release.set()
    await rig.engine.until(lambda: rig.engine.named("complete_phase"))
    reports = [c.payload["progress"] for c in rig.engine.named("report_progress")]
    assert set(reports) == {30}


async def test_keepalive_learning_the_lease_is_lost_stops_the_handler(rig: Rig) -> None:
    cancelled = asyncio.Event()

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        rig.engine.reject["report_progress"] = "lease_lost"  # from now on
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    await rig.serve(handle, keepalive=True)
    await rig.send(phase_task(heartbeat_seconds=1))
    await asyncio.wait_for(cancelled.wait(), WAIT)
    await rig.stop()
    assert not rig.engine.named("complete_phase", "fail_phase")
