"""Every command x every role x own / someone else's aggregate, through the real processor.

Generated from the command table (``chorus.engine.handlers.HANDLERS``): a command without a row
in ``chorus.engine.domain.authz.RULES``, in ``EXPECTED`` or in ``SCENARIOS`` below fails here. ``own``
means the actor is the aggregate's owner (the session's opener, the agent itself, the
workflow's starter, the phase's assignee, the name it registers); ``other`` means it is a
stranger to it. ``none`` is an actor whose keys were all revoked.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import pytest
from chorus.contracts.agents import (
    MarkOffline,
    MarkOnline,
    RecordLeaseLost,
    RegisterAgent,
    RetireAgent,
    UpdateCapabilities,
    VerifyCompletion,
    VerifyCompletions,
)
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.mcp import (
    ConfigureMcpServer,
    RecordHealth,
    RecordToolCall,
    RecordToolsDiscovered,
    RegisterMcpServer,
    RemoveMcpServer,
    ServerConfig,
    StdioTransport,
    digest,
    tool_spec,
)
from chorus.contracts.sessions import (
    CancelSession,
    OpenSession,
    ReportParticipantLost,
    SubmitResult,
    Task,
    TimeOutSession,
)
from chorus.contracts.tasks import AcceptTask
from chorus.contracts.workflow_types import DefineWorkflowType, Phase, WorkflowType
from chorus.contracts.workflows import (
    AssignPhase,
    AwaitAgent,
    CancelWorkflow,
    CompletePhase,
    ExpireLease,
    FailPhase,
    PhaseError,
    RecordPartialResult,
    ReportProgress,
    StartPhase,
    StartWorkflow,
)
from chorus.engine.domain.authz import RULES, StaticRoles
from chorus.engine.domain.context import EngineContext
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from eventsourcing.persistence import ApplicationRecorder

from .conftest import FakeClock

ROLES = ("agent", "operator", "auditor", "admin", "none")
W = frozenset({"agent", "operator", "admin"})
STAFF = frozenset({"operator", "admin"})
NOBODY: frozenset[str] = frozenset()
#: Codes that mean "you may not": the role, the relation, or not being a participant.
REFUSALS = {"not_authorized", "not_assigned", "not_a_participant"}

#: (aggregate, command) -> (roles allowed on their own aggregate, roles allowed on others').
EXPECTED: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {
    ("session", "open"): (W, W),
    ("session", "submit_result"): (W, NOBODY),  # participants only
    ("session", "cancel"): (W, NOBODY),  # its opener or coordinator only
    ("session", "timeout"): (NOBODY, NOBODY),
    ("session", "participant_lost"): (NOBODY, NOBODY),
    ("agent", "register"): (W, STAFF),  # itself, or staff for another name
    ("agent", "update_capabilities"): (W, STAFF),
    ("agent", "retire"): (W, STAFF),
    ("agent", "verify_completion"): (W, STAFF),
    ("agent", "verify_completions"): (W, STAFF),
    ("agent", "mark_online"): (NOBODY, NOBODY),
    ("agent", "mark_offline"): (NOBODY, NOBODY),
    ("workflow", "start"): (W, W),
    ("workflow", "start_phase"): (W, STAFF),  # no agent takes over someone's workflow
    ("workflow", "report_progress"): (W, STAFF),
    ("workflow", "record_partial_result"): (W, STAFF),
    ("workflow", "complete_phase"): (W, STAFF),
    ("workflow", "fail_phase"): (W, STAFF),
    ("workflow", "cancel"): (W, NOBODY),  # its starter only
    ("workflow_type", "define"): (STAFF, STAFF),  # no agent redefines a built-in type
    ("mcp_server", "register"): (STAFF, STAFF),
    ("mcp_server", "configure"): (STAFF, STAFF),
    ("mcp_server", "remove"): (STAFF, STAFF),
    ("mcp_server", "record_tools"): (STAFF, STAFF),
    ("mcp_server", "record_call"): (NOBODY, NOBODY),  # the gateway's own actor only
    ("mcp_server", "record_health"): (NOBODY, NOBODY),  # the gateway's own actor only
    ("task", "accept"): (W, NOBODY),  # the task's assignee only
    ("session", "accept_task"): (W, NOBODY),
    ("workflow", "accept_task"): (W, NOBODY),
    ("workflow", "assign_phase"): (NOBODY, NOBODY),  # the dispatcher's
    ("workflow", "await_agent"): (NOBODY, NOBODY),
    ("workflow", "expire_lease"): (NOBODY, NOBODY),
    ("agent", "lease_lost"): (NOBODY, NOBODY),
}

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ADD = tool_spec("add", None, {"type": "object", "properties": {"a": {"type": "number"}}})


@dataclass
class World:
    """A store where ``owner`` owns one of everything, and a way to issue commands."""

    recorder: ApplicationRecorder
    clock: FakeClock

    def run(self, actor: str, aggregate: str, name: str, payload: msgspec.Struct,
            roles: StaticRoles | None = None) -> Reply:  # fmt: skip
        # Setup runs with everyone an admin; the command under test with the case's roles.
        context = EngineContext(roles=roles or StaticRoles(default=frozenset({"admin"})))
        processor = Processor(self.recorder, clock=self.clock, context=context)
        handler = HANDLERS[(aggregate, name)]
        if handler.resolve is not None:  # task.accept: the task id says which aggregate
            handler = handler.resolve(payload)
        command = Command(
            actor=actor,
            handler=handler,
            envelope=Envelope(command_id=uuid.uuid4().hex, payload=payload),
        )
        return processor.handle_batch([command])[0]

    def setup(self, actor: str, aggregate: str, name: str, payload: msgspec.Struct) -> None:
        reply = self.run(actor, aggregate, name, payload)
        assert reply.status == "accepted", reply

    def session(self, opener: str, participants: list[str]) -> str:
        sid = str(uuid.uuid4())
        self.setup(opener, "session", "open", OpenSession(
            session_id=sid, participants=participants, task=Task(description="t")))  # fmt: skip
        return sid

    def workflow(self, starter: str, assignee: str | None = None) -> str:
        wid = str(uuid.uuid4())
        self.setup(starter, "workflow", "start", StartWorkflow(
            workflow_id=wid, requirements="r", workflow_type="quick"))  # fmt: skip
        if assignee is not None:
            self.setup(starter, "workflow", "start_phase", StartPhase(
                workflow_id=wid, phase="implement", assignee=assignee))  # fmt: skip
        return wid

    def mcp_server(self, owner: str) -> str:
        name = f"s{uuid.uuid4().hex[:8]}"
        self.setup(owner, "mcp_server", "register", RegisterMcpServer(
            name=name, transport=StdioTransport(command=["calc"]), tools=[ADD], owner=owner))  # fmt: skip
        return name

    def agent(self, name: str) -> str:
        self.setup(name, "agent", "register", RegisterAgent(name=name))
        return name


#: For each command: given the world, the owner and the acting actor, the payload to send.
Scenario = Callable[[World, str, str], msgspec.Struct]
SCENARIOS: dict[tuple[str, str], Scenario] = {
    ("session", "open"): lambda w, owner, actor: OpenSession(
        session_id=str(uuid.uuid4()), participants=["p1"], task=Task(description="t")),
    ("session", "submit_result"): lambda w, owner, actor: SubmitResult(
        session_id=w.session("opener", [owner]), result={"ok": True}),
    ("session", "cancel"): lambda w, owner, actor: CancelSession(
        session_id=w.session(owner, ["p1"])),
    ("session", "timeout"): lambda w, owner, actor: TimeOutSession(
        session_id=w.session(owner, ["p1"])),
    ("session", "participant_lost"): lambda w, owner, actor: ReportParticipantLost(
        session_id=w.session(owner, ["p1"]), agent_id="p1", reason="gone"),
    ("agent", "register"): lambda w, owner, actor: RegisterAgent(
        name=actor if actor == owner else "someone-new"),
    ("agent", "update_capabilities"): lambda w, owner, actor: UpdateCapabilities(
        agent_id=w.agent(owner), capabilities=["x"]),
    ("agent", "retire"): lambda w, owner, actor: RetireAgent(agent_id=w.agent(owner)),
    ("agent", "verify_completion"): lambda w, owner, actor: VerifyCompletion(
        agent_id=w.agent(owner), task_id=str(uuid.uuid4()), completion_time=NOW,
        output_hash="sha256:00"),
    ("agent", "verify_completions"): lambda w, owner, actor: VerifyCompletions(
        agent_id=w.agent(owner), claims=[VerifyCompletion(
            agent_id=w.agent(owner), task_id=str(uuid.uuid4()), completion_time=NOW,
            output_hash="sha256:00")]),
    ("agent", "mark_online"): lambda w, owner, actor: MarkOnline(
        agent_id=w.agent(owner), last_seen=NOW),
    ("agent", "mark_offline"): lambda w, owner, actor: MarkOffline(
        agent_id=w.agent(owner), last_seen=NOW, missed_heartbeats=3),
    ("workflow", "start"): lambda w, owner, actor: StartWorkflow(
        workflow_id=str(uuid.uuid4()), requirements="r", workflow_type="quick"),
    ("workflow", "start_phase"): lambda w, owner, actor: StartPhase(
        workflow_id=w.workflow(owner), phase="implement", assignee=actor),
    ("workflow", "report_progress"): lambda w, owner, actor: ReportProgress(
        workflow_id=w.workflow("starter", owner), phase="implement", progress=10),
    ("workflow", "record_partial_result"): lambda w, owner, actor: RecordPartialResult(
        workflow_id=w.workflow("starter", owner), phase="implement", result={"x": 1}),
    ("workflow", "complete_phase"): lambda w, owner, actor: CompletePhase(
        workflow_id=w.workflow("starter", owner), phase="implement"),
    ("workflow", "fail_phase"): lambda w, owner, actor: FailPhase(
        workflow_id=w.workflow("starter", owner), phase="implement",
        error=PhaseError(code="x", message="y")),
    ("workflow", "cancel"): lambda w, owner, actor: CancelWorkflow(workflow_id=w.workflow(owner)),
    ("workflow_type", "define"): lambda w, owner, actor: DefineWorkflowType(
        workflow_type=WorkflowType(name="quick", phases=[Phase(name="pwned")])),
    ("mcp_server", "register"): lambda w, owner, actor: RegisterMcpServer(
        name="fresh", transport=StdioTransport(command=["x"]), tools=[ADD]),
    ("mcp_server", "configure"): lambda w, owner, actor: ConfigureMcpServer(
        name=w.mcp_server(owner), config=ServerConfig(store_results=True)),
    ("mcp_server", "remove"): lambda w, owner, actor: RemoveMcpServer(name=w.mcp_server(owner)),
    ("mcp_server", "record_tools"): lambda w, owner, actor: RecordToolsDiscovered(
        name=w.mcp_server(owner), tools=[ADD, tool_spec("sub", None, {"type": "object"})]),
    ("mcp_server", "record_call"): lambda w, owner, actor: RecordToolCall(
        name=w.mcp_server(owner), tool="add", caller=actor, schema_digest=ADD.schema_digest,
        args_digest=digest({}), duration_ms=1.0, outcome="ok"),
    ("mcp_server", "record_health"): lambda w, owner, actor: RecordHealth(
        name=w.mcp_server(owner), status="unhealthy", error="down"),
    ("task", "accept"): lambda w, owner, actor: AcceptTask(
        task_id=w.session("opener", [owner])),
    ("session", "accept_task"): lambda w, owner, actor: AcceptTask(
        task_id=w.session("opener", [owner])),
    ("workflow", "accept_task"): lambda w, owner, actor: AcceptTask(
        task_id=f"{w.workflow('starter', owner)}/implement"),
    ("workflow", "assign_phase"): lambda w, owner, actor: AssignPhase(
        workflow_id=w.workflow(owner), phase="implement", attempt=1, agent_id=actor),
    ("workflow", "await_agent"): lambda w, owner, actor: AwaitAgent(
        workflow_id=w.workflow(owner), phase="implement", attempt=1),
    ("workflow", "expire_lease"): lambda w, owner, actor: ExpireLease(
        workflow_id=w.workflow(owner), phase="implement", attempt=1, reason="lease_expired"),
    ("agent", "lease_lost"): lambda w, owner, actor: RecordLeaseLost(
        agent_id=w.agent(owner), task_id=str(uuid.uuid4()), attempt=1, reason="gone"),
}  # fmt: skip


def test_every_command_has_a_rule_an_expectation_and_a_scenario() -> None:
    commands = set(HANDLERS)
    assert set(RULES) == commands, "engine/domain/authz.py RULES must name every command"
    assert set(EXPECTED) == commands, "add the new command to EXPECTED"
    assert set(SCENARIOS) == commands, "add the new command to SCENARIOS"


@pytest.mark.parametrize("own", [True, False], ids=["own", "other"])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("key", sorted(HANDLERS), ids=lambda k: ".".join(k))
def test_authorization_matrix(
    recorder: ApplicationRecorder, clock: FakeClock, key: tuple[str, str], role: str, own: bool
) -> None:
    world = World(recorder, clock)
    owner, actor = ("mine", "mine") if own else ("victim", "stranger")
    payload = SCENARIOS[key](world, owner, actor)
    held = frozenset() if role == "none" else frozenset({role})
    reply = world.run(actor, *key, payload, roles=StaticRoles({actor: held}))
    allowed = role in EXPECTED[key][0 if own else 1]
    refused = (
        reply.status == "rejected" and reply.error is not None and (reply.error.code in REFUSALS)
    )
    assert refused != allowed, (key, role, own, reply)
    if allowed:
        assert reply.status == "accepted", reply
