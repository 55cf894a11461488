"""Process managers start from their checkpoint, not from the start of the log.

Run against every event-store backend (SQLite, PostgreSQL) with the real processor and
command worker; the engine restart runs a real nats-server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from chorus.bootstrap import EngineService
from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, Task
from chorus.engine.adapters.worker import CommandWorker
from chorus.engine.handlers import HANDLERS
from chorus.engine.policies.timers import SessionTimer
from chorus.engine.processor import Command, Processor
from chorus.events.codec import decode_record, is_domain_topic
from chorus.store.checkpoints import CheckpointStore
from chorus.store.recorder import open_recorder
from nats.aio.client import Client as NATS

from tests.conftest import NatsEndpoint, engine_config
from tests.integration.test_delegation import config as delegation_config
from tests.integration.test_delegation import (
    events_of,
    start_with_open_session,
    submit_all,
    until,
)
from tests.integration.test_store_backends import open_cmd, store_url, submit_cmd
from tests.unit.conftest import CLOCK_START, FakeClock

__all__ = ["store_url"]  # the per-backend fixture


def deadline_cmd(sid: str, seconds: int) -> Command:
    return Command(
        actor="coord",
        handler=HANDLERS[("session", "open")],
        envelope=Envelope(
            command_id=uuid.uuid4().hex,
            payload=OpenSession(
                session_id=sid,
                participants=["a"],
                task=Task(description="t"),
                timeout_seconds=seconds,
            ),
        ),
    )


def finished_history(processor: Processor, sessions: int) -> None:
    """Sessions opened and finalised: the old log a restart must not read again."""
    for _ in range(sessions):
        sid = str(uuid.uuid4())
        processor.handle_batch([open_cmd(sid, ["a"])])
        processor.handle_batch([submit_cmd(sid, "a")])


def closings(processor: Processor) -> Counter[str]:
    out: Counter[str] = Counter()
    for n in processor.recorder.select_notifications(1, 100_000):
        if is_domain_topic(n.topic) and n.topic.startswith("session.Session"):
            record = decode_record(n)
            if record.type != "SessionOpened":
                out[record.aggregate_id] += 1
    return out


@pytest.fixture
async def worker(store_url: str) -> AsyncIterator[CommandWorker]:
    clock = FakeClock(CLOCK_START)
    processor = Processor(open_recorder(store_url), clock=clock)
    worker = CommandWorker(None, processor)  # type: ignore[arg-type]  # internal submits only
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        task.cancel()
        worker.close()


async def test_a_timer_killed_after_acting_times_each_session_out_once_after_restart(
    worker: CommandWorker,
) -> None:
    processor = worker.processor
    clock: Any = processor.clock
    finished_history(processor, 30)
    due = [str(uuid.uuid4()) for _ in range(4)]
    processor.handle_batch([deadline_cmd(sid, 60) for sid in due])
    first = SessionTimer(processor.recorder, worker, clock, checkpoint_every=3600)
    await first.tick()  # reads the whole log once and saves (position, open sessions)
    saved = first.checkpoint.saved_position
    assert saved == first.position
    assert first.events_read == 30 * 2 + 4
    clock.advance(seconds=61)
    await first.tick()  # times the four out; the next save is not due: killed here
    assert first.fired == 4
    assert first.checkpoint.saved_position == saved
    late = str(uuid.uuid4())  # opened while no timer runs, due by the time one starts
    processor.handle_batch([deadline_cmd(late, 1)])
    clock.advance(seconds=2)

    second = SessionTimer(processor.recorder, worker, clock, checkpoint_every=3600)
    await second.tick()
    assert second.checkpoint.restored_from == saved
    assert second.events_read == 4 + 1  # the four timeouts and the late opening: no history
    assert second.fired == 1
    assert second.checkpoint.saved_position == second.position
    counts = closings(processor)
    assert all(counts[sid] == 1 for sid in [*due, late])
    assert set(counts.values()) == {1}


async def test_a_timer_restarted_from_an_old_checkpoint_sends_only_duplicates(
    worker: CommandWorker,
) -> None:
    processor = worker.processor
    clock: Any = processor.clock
    sids = [str(uuid.uuid4()) for _ in range(3)]
    processor.handle_batch([deadline_cmd(sid, 60) for sid in sids])
    first = SessionTimer(processor.recorder, worker, clock, checkpoint_every=3600)
    await first.tick()
    saved = first.checkpoint.saved_position
    clock.advance(seconds=61)
    await first.tick()
    assert first.fired == 3
    # Two engines share the store: another timer, still at the old checkpoint, also acts
    # before it has read the timeouts. Its commands are the same ids: duplicates.
    other = SessionTimer(processor.recorder, worker, clock, checkpoint_every=3600)
    other.position = other.checkpoint.restore()
    other._restored = True
    assert other.position == saved
    replies = await asyncio.gather(
        *(worker.submit(SessionTimer._timeout(HANDLERS[("session", "timeout")], s)) for s in sids)
    )
    assert [r.status for r in replies] == ["duplicate"] * 3
    await other.tick()
    assert other.fired == 0
    assert set(closings(processor).values()) == {1}


def test_a_checkpoint_never_moves_backwards_and_other_code_starts_over(store_url: str) -> None:
    from chorus.store.checkpoints import Checkpoint

    store = CheckpointStore(open_recorder(store_url))
    assert store.load("m") is None
    store.save(Checkpoint("m", 10, "v1", b"ten"))
    store.save(Checkpoint("m", 7, "v1", b"seven"))  # a slower engine: ignored
    assert store.load("m") == Checkpoint("m", 10, "v1", b"ten")
    store.save(Checkpoint("m", 3, "v2", b"new code"))  # new code's row replaces the old
    assert store.load("m") == Checkpoint("m", 3, "v2", b"new code")


async def test_a_restarted_engine_reads_none_of_the_old_log(
    nats_server: NatsEndpoint, database_url: str
) -> None:
    clock = FakeClock(CLOCK_START)
    recorder = open_recorder(database_url)
    processor = Processor(recorder, clock=clock)
    finished_history(processor, 100)
    still_open = str(uuid.uuid4())
    processor.handle_batch([deadline_cmd(still_open, 600)])
    config = engine_config(nats_url=nats_server.url, database_url=database_url, clock=clock,
                          relay=False, sealer=False)  # fmt: skip

    first = EngineService(config, open_recorder(database_url))
    await first.start()
    await first.wait_ready()
    managers = [first.timer, first.delegation, first.dispatcher, first.participants]
    assert all(m is not None and m.events_read > 0 for m in managers[1:])
    for _ in range(200):  # each saves after its first round
        if all(m is not None and m.checkpoint.saved_position == m.position for m in managers):
            break
        await asyncio.sleep(0.05)
    await first.stop()

    second = EngineService(config, open_recorder(database_url))
    await second.start()
    try:
        await second.wait_ready()
        assert second.timer is not None
        managers = [second.timer, second.delegation, second.dispatcher, second.participants]
        for manager in managers:
            assert manager is not None
            assert manager.checkpoint.restored_from == manager.position
            assert manager.events_read == 0, type(manager).__name__
        assert second.timer._open == {still_open}  # the state came back with the position
        assert second.participants is not None
        assert set(second.participants._pending) == {still_open}
        assert second.dispatcher is not None
        assert set(second.dispatcher._sessions) == {still_open}
        assert [t.task_id for t in second.dispatcher.open_tasks("a")] == [still_open]
    finally:
        await second.stop()


async def test_what_the_managers_knew_of_a_workflow_is_dropped_when_it_ends(
    nats_server: NatsEndpoint, nc: NATS, database_url: str
) -> None:
    async with EngineService(delegation_config(nats_server, database_url)) as engine:
        wid, sid = await start_with_open_session(nc, database_url)
        await submit_all(nc, sid, [False, False, True])  # the session fails, so the workflow
        await until(lambda: events_of(database_url, wid)[-1].type == "WorkflowFailed", "end")
        delegation, dispatcher = engine.delegation, engine.dispatcher
        assert delegation is not None and dispatcher is not None
        await until(lambda: not delegation._workflows and not dispatcher._workflows, "forget")
        assert not any(getattr(delegation, f) for f in delegation.checkpoint_fields)
        assert not dispatcher._of_session and not dispatcher._sessions
        assert engine.participants is not None and not engine.participants._pending


def test_an_unreadable_checkpoint_is_a_start_from_the_beginning(store_url: str) -> None:
    from chorus.engine.policies.checkpoint import StateCheckpoint
    from chorus.store.checkpoints import Checkpoint

    class Owner:
        seen: list[int] = []

    store = CheckpointStore(open_recorder(store_url))
    checkpoint = StateCheckpoint(store, "owner", Owner(), ("seen",), [__name__])
    store.save(Checkpoint("owner", 42, checkpoint.version, b"not a pickle"))
    assert checkpoint.restore() == 0
    assert checkpoint.restored_from is None
