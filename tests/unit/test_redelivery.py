"""When the dispatcher sends an open task again: after 1 s (longer while acknowledgements
take longer), then with a doubling wait up to a cap, until acknowledged; all of an agent's
tasks at once when it is back online.

The dispatcher is driven by hand (records observed, rounds at chosen times by its injected
clock) and its bus is a recorder of publishes: delivery logic, nothing timed.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from chorus.contracts.sessions import Task
from chorus.contracts.workflow_types import Phase
from chorus.engine.policies.dispatch import DispatchConfig, Dispatcher
from chorus.events.codec import EventMeta, decode_record, encode_event
from chorus.events.session import SessionOpened
from chorus.events.session import TaskAccepted as SessionTaskAccepted
from chorus.events.workflow import PhaseAssigned, PhaseStarted, WorkflowStarted
from chorus.events.workflow import TaskAccepted as WorkflowTaskAccepted
from eventsourcing.persistence import ApplicationRecorder

from tests.unit.conftest import CLOCK_START, FakeClock

T0 = CLOCK_START
SID = uuid.uuid4()


class Bus:
    """Records what the dispatcher publishes (it only publishes)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.sent.append(subject.rsplit(".", 1)[-1])


def observe(
    dispatcher: Dispatcher, version: int, event: Any, sid: uuid.UUID = SID, position: int = 0,
    aggregate: str = "session",
) -> None:  # fmt: skip
    stored, _ = encode_event(
        aggregate=aggregate, aggregate_id=sid, version=version, event=event,
        meta=EventMeta(actor="ops", command_id=f"{sid}:{version}"), occurred_at=T0,
        prev_hash="",
    )  # fmt: skip
    dispatcher.observe(decode_record(stored, position or version))


def session_opened(sid: uuid.UUID, participants: list[str]) -> SessionOpened:
    return SessionOpened(
        session_id=str(sid), coordinator_id="coord", opened_by="ops", participants=participants,
        task=Task(description="review"), timeout_seconds=600, deadline=T0 + timedelta(minutes=10),
    )  # fmt: skip


@pytest.fixture
def opened(recorder: ApplicationRecorder, clock: FakeClock) -> tuple[Dispatcher, Bus, FakeClock]:
    bus = Bus()
    config = DispatchConfig(redeliver_seconds=1.0, redeliver_max_seconds=8.0)
    dispatcher = Dispatcher(recorder, None, bus, clock, config)  # type: ignore[arg-type]
    observe(dispatcher, 1, session_opened(SID, ["a1", "a2"]))
    return dispatcher, bus, clock


async def sends_at(dispatcher: Dispatcher, bus: Bus, clock: FakeClock, second: float) -> list[str]:
    clock.now = T0 + timedelta(seconds=second)
    bus.sent.clear()
    await dispatcher._deliver(clock.now)
    await dispatcher._flush()
    return sorted(bus.sent)


async def test_an_unacknowledged_task_is_sent_again_with_a_doubling_wait_up_to_the_cap(
    opened: tuple[Dispatcher, Bus, FakeClock],
) -> None:
    dispatcher, bus, clock = opened
    # Rounds every 0.25 s for a minute: the sends fall at 0, 1, 3, 7, 15, 23, 31, ... s.
    sent_at = [
        tick / 4 for tick in range(4 * 60) if await sends_at(dispatcher, bus, clock, tick / 4)
    ]
    assert sent_at == [0, 1, 3, 7, 15, 23, 31, 39, 47, 55]


async def test_an_acknowledged_task_is_not_sent_again_and_the_others_go_on(
    opened: tuple[Dispatcher, Bus, FakeClock],
) -> None:
    dispatcher, bus, clock = opened
    assert await sends_at(dispatcher, bus, clock, 0) == ["a1", "a2"]
    observe(dispatcher, 2, SessionTaskAccepted(agent_id="a1", accepted_at=T0))
    assert await sends_at(dispatcher, bus, clock, 1) == ["a2"]
    assert await sends_at(dispatcher, bus, clock, 3) == ["a2"]


async def test_an_agent_back_online_gets_its_tasks_at_once_and_the_backoff_starts_over(
    opened: tuple[Dispatcher, Bus, FakeClock],
) -> None:
    dispatcher, bus, clock = opened
    for second in (0, 1, 3, 7):
        await sends_at(dispatcher, bus, clock, second)
    dispatcher._back_online.add("a1")
    assert await sends_at(dispatcher, bus, clock, 8) == ["a1"]  # a2 is due at 15
    assert await sends_at(dispatcher, bus, clock, 9) == ["a1"]  # 1 s after its fresh send
    assert await sends_at(dispatcher, bus, clock, 10) == []
    assert await sends_at(dispatcher, bus, clock, 11) == ["a1"]  # 2 s after that
    assert await sends_at(dispatcher, bus, clock, 14) == []
    assert await sends_at(dispatcher, bus, clock, 15) == ["a1", "a2"]


async def test_a_task_sent_a_thousand_times_keeps_the_capped_wait(
    opened: tuple[Dispatcher, Bus, FakeClock],
) -> None:
    dispatcher, bus, clock = opened
    for state in dispatcher._sessions[str(SID)].pending.values():
        state[1], state[2] = T0, 5000  # an agent that never acknowledged, for 40 hours
    assert await sends_at(dispatcher, bus, clock, 7) == []
    assert await sends_at(dispatcher, bus, clock, 8) == ["a1", "a2"]


async def test_tasks_opened_at_different_times_each_keep_their_own_schedule(
    opened: tuple[Dispatcher, Bus, FakeClock],
) -> None:
    dispatcher, bus, clock = opened
    assert await sends_at(dispatcher, bus, clock, 0) == ["a1", "a2"]
    other = uuid.uuid4()
    observe(dispatcher, 1, session_opened(other, ["b1"]), sid=other, position=2)
    sent = {t / 2: await sends_at(dispatcher, bus, clock, t / 2) for t in range(1, 8)}
    assert sent == {0.5: ["b1"], 1: ["a1", "a2"], 1.5: ["b1"], 2: [], 2.5: [],
                    3: ["a1", "a2"], 3.5: ["b1"]}  # fmt: skip


async def test_a_round_looks_only_at_the_tasks_that_are_due(
    opened: tuple[Dispatcher, Bus, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, bus, clock = opened
    for k in range(1000):
        dispatcher._sessions[str(SID)].pending[f"p{k}"] = [False, None, 0]
    assert len(await sends_at(dispatcher, bus, clock, 0)) == 1002  # the first round walks
    visits: list[str] = []
    visit = dispatcher._visit

    def counted(*args: Any) -> Any:
        visits.append(args[2])
        return visit(*args)

    monkeypatch.setattr(dispatcher, "_visit", counted)
    for tick in range(1, 10):
        assert await sends_at(dispatcher, bus, clock, tick / 10) == []
    assert visits == []
    assert len(await sends_at(dispatcher, bus, clock, 1)) == 1002
    assert len(visits) == 1002


def assign_phase(dispatcher: Dispatcher, wid: uuid.UUID, agent: str) -> None:
    """A workflow started and its phase assigned to ``agent``, as the log tells it."""
    started = WorkflowStarted(
        workflow_id=str(wid), workflow_type="one", phases=[Phase(name="build")],
        requirements="r", configuration={}, priority="normal", started_by="ops",
    )  # fmt: skip
    observe(dispatcher, 1, started, wid, aggregate="workflow")
    assigned = PhaseAssigned(
        phase="build", attempt=1, agent_id=agent, assigned_at=T0,
        accept_by=T0 + timedelta(minutes=5), lease_expires_at=T0 + timedelta(minutes=30),
    )  # fmt: skip
    observe(dispatcher, 2, assigned, wid, aggregate="workflow")


async def test_acknowledgements_that_take_longer_stretch_the_wait_before_a_task_goes_again(
    opened: tuple[Dispatcher, Bus, FakeClock],
) -> None:
    """A busy engine, whose agents' reports wait in its queue, is not sent every task
    again: the first re-send waits the acknowledgements' smoothed round trip plus four mean
    deviations (RFC 6298), never less than ``redeliver_seconds``."""
    dispatcher, bus, clock = opened
    assert dispatcher.redeliver_wait() == 1.0  # nothing timed yet
    for k in range(20):  # twenty phase tasks, each acknowledged 3 s after its first send
        wid = uuid.uuid4()
        assign_phase(dispatcher, wid, "a1")
        await sends_at(dispatcher, bus, clock, 100 * k)
        clock.now += timedelta(seconds=3)
        accepted = WorkflowTaskAccepted(phase="build", attempt=1, agent_id="a1", accepted_at=T0)
        observe(dispatcher, 3, accepted, wid, aggregate="workflow")
        observe(dispatcher, 4, PhaseStarted(phase="build", assignee="a1"), wid,
                aggregate="workflow")  # fmt: skip  # the same acknowledgement: timed once
    assert dispatcher.redeliver_wait() == pytest.approx(3.0, abs=0.05)
    # A new task: sent, then again about 3 s later, then after twice that.
    other = uuid.uuid4()
    observe(dispatcher, 1, session_opened(other, ["b1"]), sid=other, position=99)

    async def to_b1(second: float) -> list[str]:
        return [a for a in await sends_at(dispatcher, bus, clock, second) if a == "b1"]

    assert [await to_b1(2000 + t) for t in (0, 1, 3, 3.1, 9, 9.2)] == [
        ["b1"], [], [], ["b1"], [], ["b1"]]  # fmt: skip


async def test_quick_acknowledgements_keep_the_configured_wait(
    opened: tuple[Dispatcher, Bus, FakeClock],
) -> None:
    dispatcher, bus, clock = opened
    for k in range(5):
        wid = uuid.uuid4()
        assign_phase(dispatcher, wid, "a1")
        await sends_at(dispatcher, bus, clock, k)
        clock.now += timedelta(milliseconds=20)
        observe(dispatcher, 3, PhaseStarted(phase="build", assignee="a1"), wid,
                aggregate="workflow")  # fmt: skip
    assert dispatcher.redeliver_wait() == 1.0
