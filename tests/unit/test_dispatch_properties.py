"""Under any interleaving of assignments, expiries, reports and cancels, at most one attempt
of a phase is live and exactly one result counts (property tests of the workflow fold),
and the dispatcher's choices follow their rules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chorus.contracts.tasks import AcceptTask
from chorus.contracts.workflow_types import Backoff, Phase, WorkflowType, WorkflowTypeRegistry
from chorus.contracts.workflows import (
    AssignPhase,
    CancelWorkflow,
    CompletePhase,
    ExpireLease,
    ReportProgress,
    StartWorkflow,
)
from chorus.engine.domain.context import EngineContext
from chorus.engine.domain.dispatch_rules import Waiting, choose_agent, effective_rank, in_order
from chorus.engine.domain.errors import DomainError
from chorus.engine.domain.workflow import (
    WorkflowState,
    decide_accept_task,
    decide_assign_phase,
    decide_cancel,
    decide_complete_phase,
    decide_expire_lease,
    decide_report_progress,
    decide_start,
)
from hypothesis import given, settings
from hypothesis import strategies as st

T0 = datetime(2030, 1, 1, tzinfo=UTC)
WID = str(uuid.uuid4())
AGENTS = ["a1", "a2", "a3"]
PHASES = ["one", "two"]
TYPE = WorkflowType(
    name="prop",
    phases=[Phase(name=n, lease_seconds=30, accept_seconds=10, heartbeat_seconds=15,
                  max_attempts=3, backoff=Backoff(initial_seconds=1)) for n in PHASES],
)  # fmt: skip
CTX = EngineContext(workflow_types=WorkflowTypeRegistry([TYPE]))

step = st.one_of(
    st.tuples(st.just("assign"), st.sampled_from(AGENTS), st.integers(1, 4), st.sampled_from(PHASES)),
    st.tuples(st.just("accept"), st.sampled_from(AGENTS), st.sampled_from(PHASES)),
    st.tuples(st.just("progress"), st.sampled_from(AGENTS), st.sampled_from(PHASES)),
    st.tuples(st.just("complete"), st.sampled_from(AGENTS), st.sampled_from(PHASES)),
    st.tuples(st.just("expire"), st.integers(1, 4), st.sampled_from(PHASES),
              st.sampled_from(["not_accepted", "lease_expired", "heartbeat_silence",
                               "agent_offline"])),
    st.tuples(st.just("cancel"), st.sampled_from(["ops", "a1"])),
    st.tuples(st.just("wait"), st.integers(0, 40)),
)  # fmt: skip


def command(op: tuple[Any, ...]) -> tuple[Any, Any, str] | None:
    match op:
        case ("assign", agent, attempt, phase):
            cmd = AssignPhase(workflow_id=WID, phase=phase, attempt=attempt, agent_id=agent)
            return decide_assign_phase, cmd, "system"
        case ("accept", agent, phase):
            return decide_accept_task, AcceptTask(task_id=f"{WID}/{phase}"), agent
        case ("progress", agent, phase):
            cmd = ReportProgress(workflow_id=WID, phase=phase, progress=50)
            return decide_report_progress, cmd, agent
        case ("complete", agent, phase):
            cmd = CompletePhase(workflow_id=WID, phase=phase, result={"by": agent})
            return decide_complete_phase, cmd, agent
        case ("expire", attempt, phase, reason):
            cmd = ExpireLease(workflow_id=WID, phase=phase, attempt=attempt, reason=reason)
            return decide_expire_lease, cmd, "system"
        case ("cancel", actor):
            return decide_cancel, CancelWorkflow(workflow_id=WID), actor
    return None


@dataclass
class Live:
    agent: str
    attempt: int


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_one_live_attempt_per_phase_and_only_the_live_holders_result_counts(
    ops: list[tuple[Any, ...]],
) -> None:
    state = WorkflowState(id=uuid.UUID(WID))
    for event in decide_start(
        state,
        StartWorkflow(workflow_id=WID, requirements="r", workflow_type="prop"),
        "ops",
        T0,
        CTX,
    ):
        state.apply(event)  # fmt: skip
    now = T0
    live: dict[str, Live] = {}  # phase -> the attempt the log says is live
    completed: dict[str, list[str]] = {}
    for op in ops:
        if op[0] == "wait":
            now += timedelta(seconds=op[1])
            continue
        decided = command(op)
        assert decided is not None
        decide, cmd, actor = decided
        try:
            events = decide(state, cmd, actor, now, CTX)
        except DomainError:
            continue
        for event in events:
            name = type(event).__name__
            if name == "PhaseAssigned":
                assert event.phase not in live, "a second attempt went live"
                live[event.phase] = Live(event.agent_id, event.attempt)
            elif name == "PhaseLeaseExpired":
                assert live.pop(event.phase).attempt == event.attempt
            elif name == "PhaseCompleted":
                holder = live.pop(event.phase, None)
                assert holder is not None and holder.agent == actor, "a result without a lease"
                completed.setdefault(event.phase, []).append(actor)
            elif name in ("WorkflowCancelled", "WorkflowFailed"):
                live.clear()
            state.apply(event)
    assert all(len(by) == 1 for by in completed.values()), "one result per phase"
    if state.status == "completed":
        assert sorted(completed) == sorted(PHASES)
        assert state.results[PHASES[-1]] == {"by": completed[PHASES[-1]][0]}


@dataclass
class Agent:
    agent_id: str
    status: str = "online"
    capabilities: frozenset[str] = frozenset()
    score: float = 0.5
    verified: int = 0
    rejected: int = 0
    max_concurrency: int = 1


def test_the_most_reliable_qualified_agent_with_a_free_slot_is_chosen() -> None:
    agents = [
        Agent("best", capabilities=frozenset({"py"}), score=0.9),
        Agent("busy", capabilities=frozenset({"py"}), score=0.95),
        Agent("offline", status="offline", capabilities=frozenset({"py"}), score=0.99),
        Agent("unskilled", score=0.99),
        Agent("ok", capabilities=frozenset({"py", "go"}), score=0.6),
    ]
    routing = choose_agent(agents, ["py"], {"busy": 1})
    assert routing is not None
    assert routing.chosen == ["best"]
    assert [c.agent_id for c in routing.candidates] == ["best", "ok"]
    assert choose_agent(agents, ["rust"], {}) is None


def test_an_agent_with_more_slots_takes_more_work() -> None:
    wide = Agent("wide", max_concurrency=3)
    assert choose_agent([wide], [], {"wide": 2}) is not None
    assert choose_agent([wide], [], {"wide": 3}) is None


def test_an_agent_that_lost_the_lease_gets_the_phase_again_only_if_nobody_else_can() -> None:
    agents = [Agent("lost", score=0.9), Agent("other", score=0.5)]
    routing = choose_agent(agents, [], {}, lost={"lost"})
    assert routing is not None and routing.chosen == ["other"]
    routing = choose_agent(agents[:1], [], {}, lost={"lost"})
    assert routing is not None and routing.chosen == ["lost"]


def test_waiting_work_goes_by_priority_then_age() -> None:
    old_low = Waiting("w1", "low", T0, 1)
    new_high = Waiting("w2", "high", T0 + timedelta(seconds=5), 2)
    old_high = Waiting("w3", "high", T0 + timedelta(seconds=1), 3)
    order = in_order([old_low, new_high, old_high], T0 + timedelta(seconds=10), 60)
    assert [w.workflow_id for w in order] == ["w3", "w2", "w1"]


@given(st.integers(0, 10_000))
def test_aging_lifts_low_work_until_it_goes_before_fresh_critical_work(waited: int) -> None:
    now = T0 + timedelta(seconds=waited)
    low = Waiting("low", "low", T0, 1)
    critical = Waiting("crit", "critical", now, 2)
    first = in_order([critical, low], now, 60)[0]
    if waited >= 4 * 60:
        assert first is low
    assert effective_rank(low, now, 60) <= 3
