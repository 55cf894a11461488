"""Reliability cannot be farmed: work an agent's partner arranged for it earns nothing.

The reviewer's reproduction: agent-1 opened 8 sessions naming only agent-2, agent-2
submitted and had each completion verified, and its reliability rose from 0.5 to 0.9, so
routing ranked it first. Here the same attack runs against the real processor and store,
and the agents read model is folded from the recorded log.
"""

from __future__ import annotations

import uuid

import msgspec
import pytest
from chorus.contracts.agents import RegisterAgent, VerifyCompletion, agent_uuid, result_hash
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.engine.domain.agent import AgentState
from chorus.engine.domain.authz import StaticRoles
from chorus.engine.domain.context import EngineContext
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.projections.agents import AgentsProjection, agent_metrics, get_agent, list_agents
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import ProjectionRunner
from eventsourcing.persistence import ApplicationRecorder

from tests.conftest import ReadStores

from .conftest import FakeClock

ROLES = StaticRoles({"ops-1": {"operator"}})


def send(
    processor: Processor, actor: str, aggregate: str, name: str, payload: msgspec.Struct
) -> Reply:
    command = Command(
        actor=actor,
        handler=HANDLERS[(aggregate, name)],
        envelope=Envelope(command_id=uuid.uuid4().hex, payload=payload),
    )
    reply = processor.handle_batch([command])[0]
    assert reply.status == "accepted", reply
    return reply


@pytest.fixture
def engine(recorder: ApplicationRecorder, clock: FakeClock) -> Processor:
    processor = Processor(recorder, clock=clock, context=EngineContext(roles=ROLES))
    for name in ("agent-0", "agent-1", "agent-2"):
        send(processor, name, "agent", "register", RegisterAgent(name=name, capabilities=["rv"]))
    return processor


def task_done_by(engine: Processor, opener: str, worker: str, n: int) -> str:
    """``opener`` opens a session naming only ``worker``, which submits and claims it."""
    sid = str(uuid.uuid4())
    task = Task(description=f"task {n}")
    send(engine, opener, "session", "open", OpenSession(session_id=sid, participants=[worker], task=task))  # fmt: skip
    result = {"n": n}
    send(engine, worker, "session", "submit_result", SubmitResult(session_id=sid, result=result))
    claim = VerifyCompletion(
        agent_id=worker,
        task_id=sid,
        completion_time=engine.clock(),
        output_hash=result_hash(result),
    )
    send(engine, worker, "agent", "verify_completion", claim)
    return sid


def agent_state(engine: Processor, name: str) -> AgentState:
    engine.evict([agent_uuid(name)])
    state = engine.load(HANDLERS[("agent", "register")], agent_uuid(name))
    assert isinstance(state, AgentState)
    return state


def read_model(recorder: ApplicationRecorder, stores: ReadStores) -> ReadStore:
    store = ReadStore(stores.url("read"))
    ProjectionRunner(recorder, store, AgentsProjection()).rebuild()
    return store


def test_sessions_a_partner_opened_do_not_raise_reliability_or_routing_rank(
    engine: Processor, recorder: ApplicationRecorder, clock: FakeClock, read_stores: ReadStores
) -> None:
    for n in range(8):
        task_done_by(engine, "agent-1", "agent-2", n)
    farmed = agent_state(engine, "agent-2")
    assert (farmed.verified, farmed.rejected, farmed.score) == (0, 0, 0.5)
    # Routing still sees agent-2 level with an agent that did nothing (ties go by id).
    routed = OpenSession(session_id=str(uuid.uuid4()), capabilities=["rv"], size=1,
                         task=Task(description="who is best?"))  # fmt: skip
    send(engine, "ops-1", "session", "open", routed)
    opened = engine.load(HANDLERS[("session", "open")], uuid.UUID(routed.session_id))
    assert list(opened.participants) == ["agent-0"]  # type: ignore[attr-defined]
    with read_model(recorder, read_stores).transaction() as conn:
        view = get_agent(conn, "agent-2")
        assert view is not None
        assert (view.verified, view.reliability_score) == (0, 0.5)
        ranked = list_agents(conn, sort="reliability", limit=3)
        assert ranked.items[0].agent_id == "agent-0"
        metrics = agent_metrics(conn, "agent-2", "all", clock())
        assert metrics is not None and metrics.verified == 0


def test_work_an_operator_assigned_counts(
    engine: Processor, recorder: ApplicationRecorder, read_stores: ReadStores
) -> None:
    task_done_by(engine, "ops-1", "agent-2", 1)
    assert agent_state(engine, "agent-2").verified == 1
    with read_model(recorder, read_stores).transaction() as conn:
        view = get_agent(conn, "agent-2")
        assert view is not None and view.verified == 1
