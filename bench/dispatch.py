"""Dispatch: phases per second and assignment latency, against JetStream in the same run.

    python -m bench.dispatch [--agents 20] [--workflows 300] [--rate 100] [--seconds 10] [--sdk]
                             [--no-claims] [--relay-in-engine]

Starts a nats-server from the wheel and the engine as ``chorus up`` runs it (SQLite;
``chorus engine`` with worker and process managers, ``chorus relay`` with the relay and the
sealer beside it; ``--relay-in-engine``: all in one process), registers
``--agents`` no-op agents in this process (plain nats-py subscribers on their inboxes,
``max_concurrency`` 100 each; agents are programs of their own, so they do not share the
engine's interpreter) that complete every phase task the moment it arrives (``--sdk``:
the same number of ``AgentClient.serve`` agents with a handler that returns at once; they
complete each task (which acknowledges it: a handler that quick needs no ``task.accept``)
and claim the completion with its evidence, the claims of about 0.25 s in one
``verify_completions``, so a phase costs the engine a fraction of a command and one event
more than with plain agents; ``--no-claims``: the SDK fleet without its claims, which
shows what they cost), then:

1. **Throughput**: starts ``--workflows`` workflows of three phases at once and times
   until every one has completed: phases/s.
2. **Latency at a steady rate**: starts workflows at ``--rate`` phases/s for
   ``--seconds`` and reports, per phase, the time from ``PhaseAssigned`` being recorded
   (its ``occurred_at``) to the task reaching the agent: p50 / p99.

The baseline, in the same run, is JetStream itself: async publishes with acks to a
scratch stream, msgs/s. Every phase costs the engine about 2.3 commands (its assignment,
its completion, which accepts and starts it, and a third of the workflow's start; SDK
agents add a verdict event and a share of a claims command), so the ratio says how much of
the bus's own speed dispatch keeps per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
from chorus.agent_sdk import AgentClient
from chorus.events.codec import decode_record
from chorus.events.workflow import PhaseAssigned
from chorus.natsd import start_nats_server
from chorus.store.recorder import open_recorder
from nats.aio.msg import Msg

from bench.e2e import spawn_engine, wait_for_engine

#: The bench's workflow type, given to the engine process as a workflow types file.
BENCH_TYPES_TOML = """
[[workflow_types]]
name = "bench3"
[[workflow_types.phases]]
name = "one"
[[workflow_types.phases]]
name = "two"
[[workflow_types.phases]]
name = "three"
"""


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps({"command_id": uuid.uuid4().hex, "payload": payload}).encode()


class Fleet:
    """No-op agents: each phase task is completed at once (which also accepts it)."""

    def __init__(self, nc: nats.NATS, names: list[str]) -> None:
        self.nc = nc
        self.names = names
        self.received: dict[tuple[str, int], float] = {}  # (task_id, attempt) -> wall time
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for name in self.names:
            await self.nc.subscribe(f"chorus.task.{name}", cb=self._task_for(name))
            await self.nc.request(f"chorus.cmd.{name}.agent.register",
                                  _body({"name": name, "max_concurrency": 100}), timeout=10)  # fmt: skip

    def _task_for(self, name: str) -> Any:
        async def got(msg: Msg) -> None:
            task = json.loads(msg.data)
            key = (task["task_id"], task.get("attempt", 0))
            if task["kind"] != "phase" or key in self.received:
                return
            self.received[key] = time.time()
            job = asyncio.create_task(self._complete(name, task))
            self.tasks.add(job)
            job.add_done_callback(self.tasks.discard)

        return got

    async def _complete(self, name: str, task: dict[str, Any]) -> None:
        payload = {"workflow_id": task["workflow_id"], "phase": task["phase"], "result": {}}
        await self.nc.request(f"chorus.cmd.{name}.workflow.complete_phase", _body(payload),
                              timeout=30)  # fmt: skip

    async def beat(self) -> None:
        while True:
            for name in self.names:
                await self.nc.publish(f"chorus.cmd.{name}.agent.heartbeat", b"")
            await asyncio.sleep(1.0)


class SdkFleet:
    """No-op agents on the SDK (``AgentClient.serve``): each handler returns at once, the
    phase is completed (which acknowledges it: no ``task.accept`` for a handler that
    quick) and the completion claimed with its evidence, as any SDK agent does (the
    claims batched, a verdict recorded for each)."""

    def __init__(self, url: str, names: list[str], claims: bool = True) -> None:
        self.clients = [AgentClient.connect(url, name) for name in names]
        self.claims = claims
        self.received: dict[tuple[str, int], float] = {}  # (task_id, attempt) -> wall time
        self.serving: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Serve every client; ``run`` waits for their registrations in the log."""
        for client in self.clients:
            serving = client.serve(self._handle, max_concurrency=100, claim_completions=self.claims)
            self.serving.append(asyncio.create_task(serving))

    async def _handle(self, task: Any, ctx: Any) -> dict[str, Any]:
        self.received.setdefault((task.task_id, getattr(task, "attempt", 0) or 0), time.time())
        return {}

    async def beat(self) -> None:
        await asyncio.Event().wait()  # the SDK heartbeats by itself

    async def stop(self) -> None:
        for client in self.clients:
            client.shutdown()
        await asyncio.gather(*self.serving, return_exceptions=True)


async def _start(nc: nats.NATS, wid: str) -> None:
    await nc.request("chorus.cmd.ops.workflow.start", _body(
        {"workflow_id": wid, "requirements": "noop", "workflow_type": "bench3"}), timeout=30)  # fmt: skip


class Completions:
    """Counts ``WorkflowCompleted`` in the log, reading only what is new each time."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self.position = 0
        self.done: set[str] = set()

    def read(self) -> set[str]:
        for n in self.recorder.select_notifications(
            self.position + 1, 100_000, topics=["workflow.WorkflowCompleted"]
        ):
            self.done.add(str(n.originator_id))
            self.position = n.id
        return self.done


def _assigned_at(recorder: Any) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    for n in recorder.select_notifications(1, 10_000_000, topics=["workflow.PhaseAssigned"]):
        record = decode_record(n)
        event = record.event
        assert isinstance(event, PhaseAssigned)
        assert isinstance(record.occurred_at, datetime)
        key = (f"{record.aggregate_id}/{event.phase}", event.attempt)
        out[key] = record.occurred_at.timestamp()
    return out


async def _wait_registered(recorder: Any, agents: int) -> None:
    """Until ``agents`` registrations are in the log (SDK agents register as they start)."""
    topics = ["agent.AgentRegistered"]
    while True:
        found = await asyncio.to_thread(recorder.select_notifications, 1, 100_000, topics=topics)
        if len(found) >= agents:
            return
        await asyncio.sleep(0.05)


async def _wait_completed(completions: Completions, wids: set[str]) -> None:
    # Polls the log: the bench must not change what it measures.
    while not wids <= await asyncio.to_thread(completions.read):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _jetstream_baseline(url: str, messages: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH_BASELINE", subjects=["bench.baseline.>"])
    started = time.perf_counter()
    acks = [
        await js.publish_async(f"bench.baseline.{i % 100}", b"x" * 200) for i in range(messages)
    ]
    await asyncio.gather(*acks)
    rate = messages / (time.perf_counter() - started)
    await js.delete_stream("BENCH_BASELINE")
    await nc.close()
    return rate


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(
    agents: int, workflows: int, rate: float, seconds: float, sdk: bool, relay_in_engine: bool,
    claims: bool = True,
) -> None:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    server = start_nats_server(work / "nats", monitor=False)
    database_url = f"sqlite:///{work}/events.db"
    types = work / "types.toml"
    types.write_text(BENCH_TYPES_TOML)
    engine = spawn_engine({
        "CHORUS_NATS_URL": server.url, "CHORUS_DATA_DIR": str(work),
        "CHORUS_DATABASE_URL": database_url, "CHORUS_WORKFLOW_TYPES": str(types),
        "CHORUS_SESSION_QUOTA": "0",
    }, work, relay_in_engine)  # fmt: skip
    try:
        nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024)
        await wait_for_engine(nc, engine)
        names = [f"bench-{i}" for i in range(agents)]
        fleet: Fleet | SdkFleet = SdkFleet(server.url, names, claims) if sdk else Fleet(nc, names)
        await fleet.start()
        recorder = open_recorder(database_url)
        await _wait_registered(recorder, agents)
        beating = asyncio.create_task(fleet.beat())
        completions = Completions(recorder)

        burst = {str(uuid.uuid4()) for _ in range(workflows)}
        started = time.perf_counter()
        await asyncio.gather(*(_start(nc, wid) for wid in burst))
        await _wait_completed(completions, burst)
        throughput = 3 * workflows / (time.perf_counter() - started)

        paced: set[str] = set()
        interval = 3 / rate  # a workflow is three phases
        first = len(fleet.received)
        loop_start = time.perf_counter()
        while time.perf_counter() - loop_start < seconds:
            wid = str(uuid.uuid4())
            paced.add(wid)
            asyncio.create_task(_start(nc, wid))  # noqa: RUF006 (awaited via the log)
            await asyncio.sleep(interval)
        await _wait_completed(completions, paced)
        # Both clocks are this machine's wall clock: the engine stamps PhaseAssigned,
        # the fleet the task's arrival.
        assigned = await asyncio.to_thread(_assigned_at, recorder)
        latencies = [
            (fleet.received[key] - assigned[key]) * 1000
            for key in list(fleet.received)[first:]
            if key in assigned
        ]
        beating.cancel()
        if isinstance(fleet, SdkFleet):
            await fleet.stop()
        await nc.close()
        baseline = await _jetstream_baseline(server.url, 20_000)
    finally:
        for process in engine:
            process.terminate()
        for process in engine:
            process.wait(timeout=30)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    kind = ("SDK agents" if claims else "SDK agents without claims") if sdk else "agents"
    print(f"chorus bench.dispatch  ({agents} no-op {kind}, workflows of 3 phases)")
    print(f"  throughput ({workflows} workflows at once)   {throughput:>10,.0f} phases/s")
    print(f"  JetStream publish_async, same run          {baseline:>10,.0f} msgs/s (baseline)")
    print(f"  ratio phases / JetStream msgs              {throughput / baseline:>10.4f}")
    print(f"  assignment latency at {rate:.0f} phases/s ({len(latencies)} phases)")
    if latencies:
        print(f"    p50 {statistics.median(latencies):8.1f} ms   "
              f"p99 {_percentile(latencies, 0.99):8.1f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--workflows", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sdk", action="store_true", help="agents on AgentClient.serve")
    parser.add_argument("--no-claims", action="store_true",
                        help="with --sdk: the agents claim no completions")  # fmt: skip
    parser.add_argument("--relay-in-engine", action="store_true",
                        help="run the relay and the sealer in the engine process (not as chorus up does)")  # fmt: skip
    args = parser.parse_args()
    asyncio.run(run(args.agents, args.workflows, args.rate, args.seconds, args.sdk,
                    args.relay_in_engine, not args.no_claims))  # fmt: skip


if __name__ == "__main__":
    main()
