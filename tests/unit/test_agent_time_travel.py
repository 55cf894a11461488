"""Agent time travel: the past view of an agent at each of its versions (or as of each
moment) is what the live ``agents`` read model showed then, including what sessions and
workflows contributed (busy status, assignments, task counts, last activity), and agrees
with the engine's ``AgentState`` fold on the agent's own fields."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
from chorus.contracts.agents import (
    MarkOffline,
    MarkOnline,
    RegisterAgent,
    RetireAgent,
    VerifyCompletion,
    agent_uuid,
)
from chorus.contracts.envelope import Envelope
from chorus.contracts.feed import EventRecord
from chorus.engine.domain.agent import AgentState
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.events.codec import decode_record, is_domain_topic, typed_event
from chorus.projections.agents import AgentsProjection, get_agent
from chorus.projections.history import History
from chorus.projections.timetravel import state_at
from chorus.store.recorder import open_recorder
from eventsourcing.persistence import ApplicationRecorder

from .conftest import FakeClock
from .test_processor import cancel, open_session, submit


def agent_command(actor: str, name: str, payload: msgspec.Struct, n: int) -> Command:
    return Command(actor=actor, handler=HANDLERS[("agent", name)],
                   envelope=Envelope(command_id=f"{name}-{n}", payload=payload))  # fmt: skip


def write_agent_history(recorder: ApplicationRecorder, clock: FakeClock) -> None:
    """a1 registers, is given two sessions, goes offline and back, submits, claims a
    completion, has a session cancelled, retires; other agents' sessions interleave."""
    p = Processor(recorder, clock=clock)
    steps: list[Command] = []
    s1, s2, other = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
    steps = [
        agent_command("a1", "register", RegisterAgent(name="a1", capabilities=["py"]), 1),
        agent_command("a2", "register", RegisterAgent(name="a2"), 2),
        open_session(s1, ("a1", "a2")),
        open_session(other, ("a2", "b")),
        agent_command("system", "mark_offline",
                      MarkOffline(agent_id="a1", last_seen=clock.now, missed_heartbeats=3), 3),
        submit(s1, "a1"),
        agent_command("system", "mark_online", MarkOnline(agent_id="a1", last_seen=clock.now), 4),
        open_session(s2, ("a1", "b")),
        submit(other, "a2"),
        agent_command("a1", "verify_completion", VerifyCompletion(
            agent_id="a1", task_id=s1, completion_time=clock.now,
            output_hash="sha256:" + "0" * 64), 5),
        cancel(s2),
        agent_command("a1", "retire", RetireAgent(agent_id="a1"), 6),
    ]  # fmt: skip
    for step in steps:
        assert p.handle_batch([step])[0].status == "accepted", step
        clock.advance(seconds=7)


def live_view(records: list[EventRecord]) -> Any:
    """What the live read model shows after exactly these records."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    projection = AgentsProjection()
    for statement in projection.ddl:
        conn.execute(statement)
    for record in records:
        if record.aggregate in projection.aggregates:
            projection.apply(conn, record)
    return get_agent(conn, "a1")


def test_a_past_agent_view_equals_the_live_model_and_the_engine_fold_at_each_version(
    tmp_path: Path, clock: FakeClock
) -> None:
    recorder = open_recorder(f"sqlite:///{tmp_path}/e.db")
    write_agent_history(recorder, clock)
    log = [decode_record(n) for n in recorder.select_notifications(1, 1000)
           if is_domain_topic(n.topic)]  # fmt: skip
    history = History("", recorder)
    uid = str(agent_uuid("a1"))
    own = [r for r in log if r.aggregate_id == uid]
    assert [r.type for r in own] == [
        "AgentRegistered",
        "AgentWentOffline",
        "AgentCameOnline",
        "CompletionRejected",
        "AgentRetired",
    ]
    state = AgentState(id=agent_uuid("a1"))
    seen_busy = False
    for record in own:
        state.apply(typed_event(record))
        past = state_at(history, "agent", uid, at_version=record.version)
        assert past is not None
        expected = live_view([r for r in log if r.position <= record.position])
        assert past.view == expected, record.type
        as_of = state_at(history, "agent", uid, as_of=record.occurred_at)
        assert as_of is not None
        assert as_of.view == live_view([r for r in log if r.occurred_at <= record.occurred_at])
        view = past.view
        seen_busy |= view.status == "busy"
        assert view.status == ("busy" if view.open_tasks and state.status == "online"
                               else state.status)  # fmt: skip
        assert (view.version, view.verified, view.rejected) == (
            state.version, state.verified, state.rejected)  # fmt: skip
        assert set(view.capabilities) == state.capabilities
        assert view.last_seen is not None
    assert seen_busy
    final = state_at(history, "agent", uid)
    assert final is not None
    assert final.view == live_view(log)
    assert final.view.total_tasks == 2
    assert final.view.open_tasks == 0
