"""Snapshots: a cold load of a long aggregate folds only what came after its latest snapshot,
and the state it gives is the state a full fold gives. Run against every backend."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from chorus.contracts.agents import MarkOffline, MarkOnline, RegisterAgent, agent_uuid
from chorus.contracts.envelope import Envelope
from chorus.contracts.workflows import StartWorkflow
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.store.recorder import open_recorder
from chorus.store.snapshots import snapshot_recorder
from eventsourcing.persistence import StoredEvent

from tests.integration.test_store_backends import open_cmd, store_url, submit_cmd
from tests.unit.conftest import CLOCK_START, FakeClock

__all__ = ["store_url"]  # the per-backend fixture


def command(actor: str, aggregate: str, name: str, payload: Any) -> Command:
    return Command(actor=actor, handler=HANDLERS[(aggregate, name)],
                   envelope=Envelope(command_id=uuid.uuid4().hex, payload=payload))  # fmt: skip


def agent_life(processor: Processor, clock: FakeClock, name: str, transitions: int) -> None:
    processor.handle_batch([command(name, "agent", "register", RegisterAgent(name=name))])
    for i in range(transitions):
        clock.advance(seconds=1)
        payload: Any = MarkOffline(agent_id=name, last_seen=clock.now, missed_heartbeats=3) if i % 2 == 0 else (
            MarkOnline(agent_id=name, last_seen=clock.now))  # fmt: skip
        name_of = "mark_offline" if i % 2 == 0 else "mark_online"
        reply = processor.handle_batch([command("system", "agent", name_of, payload)])[0]
        assert reply.status == "accepted", reply


def test_a_long_agent_loads_from_its_snapshot_and_equals_a_full_fold(store_url: str) -> None:
    clock = FakeClock(CLOCK_START)
    writer = Processor(open_recorder(store_url), clock=clock, snapshot_interval=10)
    agent_life(writer, clock, "agent-1", 34)  # 35 events: snapshots at 10, 20 and 30
    assert writer.snapshots.taken == 3
    handler = HANDLERS[("agent", "register")]
    key = agent_uuid("agent-1")

    cold = Processor(open_recorder(store_url), snapshot_interval=10)
    state = cold.load(handler, key)
    assert cold.snapshots.events_folded == 5  # 31..35 only
    full = Processor(open_recorder(store_url), snapshot_interval=0)
    assert state == full.load(handler, key)
    assert full.snapshots.events_folded == 35
    assert state.version == 35
    assert state.status == "online"  # the last of 34 transitions


def test_every_kind_of_aggregate_comes_back_from_a_snapshot_as_folded(store_url: str) -> None:
    clock = FakeClock(CLOCK_START)
    writer = Processor(open_recorder(store_url), clock=clock, snapshot_interval=1)
    sid, wid = str(uuid.uuid4()), str(uuid.uuid4())
    writer.handle_batch([open_cmd(sid, ["a", "b"])])
    writer.handle_batch([submit_cmd(sid, "a")])
    start = StartWorkflow(workflow_id=wid, requirements="r", workflow_type="quick")
    assert writer.handle_batch([command("ops", "workflow", "start", start)])[0].status == (
        "accepted"
    )
    agent_life(writer, clock, "agent-2", 3)
    kinds = [(("session", "open"), uuid.UUID(sid)), (("workflow", "start"), uuid.UUID(wid)),
             (("agent", "register"), agent_uuid("agent-2"))]  # fmt: skip
    for key, aggregate_id in kinds:
        from_snapshot = Processor(open_recorder(store_url), snapshot_interval=1)
        state = from_snapshot.load(HANDLERS[key], aggregate_id)
        assert from_snapshot.snapshots.events_folded == 0, key
        folded = Processor(open_recorder(store_url), snapshot_interval=0)
        assert state == folded.load(HANDLERS[key], aggregate_id), key


def test_a_snapshot_taken_by_other_code_is_passed_over(store_url: str) -> None:
    clock = FakeClock(CLOCK_START)
    writer = Processor(open_recorder(store_url), clock=clock, snapshot_interval=2)
    agent_life(writer, clock, "agent-3", 3)
    recorder = snapshot_recorder(open_recorder(store_url))
    key = agent_uuid("agent-3")
    (stored,) = recorder.select_events(key, desc=True, limit=1)
    reader = Processor(open_recorder(store_url), snapshot_interval=2)
    reader.snapshots._topics[type(HANDLERS[("agent", "register")].new_state(key))] = "other"
    state = reader.load(HANDLERS[("agent", "register")], key)
    assert stored.originator_version == 4
    assert reader.snapshots.events_folded == 4  # from the first event
    assert state.version == 4


def test_an_unreadable_snapshot_is_passed_over(store_url: str) -> None:
    """A snapshot with this code's topic whose state does not decode into the state class
    (written by hand, or a bug) costs a full fold, not the load."""
    clock = FakeClock(CLOCK_START)
    writer = Processor(open_recorder(store_url), clock=clock, snapshot_interval=2)
    agent_life(writer, clock, "agent-4", 3)  # 4 events: a snapshot at 4
    recorder = snapshot_recorder(open_recorder(store_url))
    key = agent_uuid("agent-4")
    (stored,) = recorder.select_events(key, desc=True, limit=1)
    handler = HANDLERS[("agent", "register")]
    reader = Processor(open_recorder(store_url), snapshot_interval=2)
    topic = reader.snapshots._topic(type(handler.new_state(key)))
    broken = msgspec.msgpack.encode({"topic": topic, "state": {"version": "four"}})
    recorder.insert_events([StoredEvent(originator_id=key, originator_version=5,
                                        topic=stored.topic, state=broken)])  # fmt: skip
    state = reader.load(handler, key)
    assert reader.snapshots.events_folded == 4  # from the first event
    assert state == Processor(open_recorder(store_url), snapshot_interval=0).load(handler, key)
