"""Attacks an ordinary agent key made on the engine, each refused by the engine itself.

The reviewer's reproductions, against the real processor and store: an agent redefining a
built-in workflow type, taking over and failing an operator's workflow, registering a name
that passes for the engine, and squatting ids the engine derives.
"""

from __future__ import annotations

import uuid

import msgspec
import pytest
from chorus.contracts.agents import RegisterAgent, agent_uuid
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.sessions import OpenSession, Task
from chorus.contracts.workflow_types import DefineWorkflowType, Phase, WorkflowType
from chorus.contracts.workflows import FailPhase, PhaseError, StartPhase, StartWorkflow
from chorus.engine.domain.authz import StaticRoles
from chorus.engine.domain.context import EngineContext
from chorus.engine.handlers import HANDLERS
from chorus.engine.policies.delegation import delegated_session_id
from chorus.engine.processor import Command, Processor
from eventsourcing.persistence import ApplicationRecorder

from .conftest import FakeClock

ROLES = StaticRoles({"ops-1": {"operator"}, "root": {"admin"}, "agent-1": {"agent"}})


def send(
    processor: Processor, actor: str, aggregate: str, name: str, payload: msgspec.Struct
) -> Reply:
    command = Command(
        actor=actor,
        handler=HANDLERS[(aggregate, name)],
        envelope=Envelope(command_id=uuid.uuid4().hex, payload=payload),
    )
    return processor.handle_batch([command])[0]


@pytest.fixture
def engine(recorder: ApplicationRecorder, clock: FakeClock) -> Processor:
    return Processor(recorder, clock=clock, context=EngineContext(roles=ROLES))


def code(reply: Reply) -> str | None:
    return reply.error.code if reply.error is not None else None


def test_an_agent_cannot_redefine_a_built_in_workflow_type(engine: Processor) -> None:
    evil = DefineWorkflowType(workflow_type=WorkflowType(name="quick", phases=[Phase(name="x")]))
    reply = send(engine, "agent-1", "workflow_type", "define", evil)
    assert code(reply) == "not_authorized"
    assert send(engine, "root", "workflow_type", "define", evil).status == "accepted"


def test_an_agent_cannot_take_over_and_fail_an_operators_workflow(engine: Processor) -> None:
    wid = str(uuid.uuid4())
    start = StartWorkflow(workflow_id=wid, requirements="r", workflow_type="quick")
    assert send(engine, "ops-1", "workflow", "start", start).status == "accepted"
    takeover = StartPhase(workflow_id=wid, phase="implement", assignee="agent-1")
    assert code(send(engine, "agent-1", "workflow", "start_phase", takeover)) == "not_authorized"
    # The operator assigns the phase; nobody else may name the assignee.
    assert send(engine, "ops-1", "workflow", "start_phase", takeover).status == "accepted"
    fail = FailPhase(workflow_id=wid, phase="implement", error=PhaseError(code="x", message="y"))
    assert code(send(engine, "mallory", "workflow", "fail_phase", fail)) == "not_assigned"


@pytest.mark.parametrize("name", ["System", "SYSTEM", "system", "system:1", "Engine", "gateway"])
def test_names_that_pass_for_chorus_itself_are_refused(name: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode({"name": name}), type=RegisterAgent, strict=True)


@pytest.mark.parametrize("name", ["a b", "x.y", "-lead", "p@q", "a" * 65])
def test_agent_names_use_a_restricted_alphabet(name: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": name}, RegisterAgent)


def test_a_delegated_phases_session_id_cannot_be_opened_first(engine: Processor) -> None:
    wid = str(uuid.uuid4())
    squat = OpenSession(
        session_id=delegated_session_id(wid, "review"),
        participants=["agent-1"],
        task=Task(description="mine now"),
    )
    assert code(send(engine, "agent-1", "session", "open", squat)) == "reserved_id"
    assert send(engine, "system", "session", "open", squat).status == "accepted"


def test_an_agents_id_cannot_be_squatted_by_a_session_or_workflow(engine: Processor) -> None:
    victim = str(agent_uuid("future-agent"))
    squat = OpenSession(session_id=victim, participants=["p"], task=Task(description="t"))
    assert code(send(engine, "agent-1", "session", "open", squat)) == "reserved_id"
    start = StartWorkflow(workflow_id=victim, requirements="r", workflow_type="quick")
    assert code(send(engine, "agent-1", "workflow", "start", start)) == "reserved_id"
    reply = send(engine, "future-agent", "agent", "register", RegisterAgent(name="future-agent"))
    assert reply.status == "accepted"
