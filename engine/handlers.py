"""The handler map: which command goes to which decision, in one readable table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import msgspec
from chorus.contracts.agents import (
    MarkOffline,
    MarkOnline,
    RecordLeaseLost,
    RegisterAgent,
    RetireAgent,
    UpdateCapabilities,
    VerifyCompletion,
    VerifyCompletions,
    agent_uuid,
)
from chorus.contracts.envelope import Envelope
from chorus.contracts.mcp import (
    ConfigureMcpServer,
    RecordHealth,
    RecordToolCall,
    RecordToolsDiscovered,
    RegisterMcpServer,
    RemoveMcpServer,
    server_uuid,
)
from chorus.contracts.sessions import (
    CancelSession,
    OpenSession,
    ReportParticipantLost,
    SubmitResult,
    TimeOutSession,
)
from chorus.contracts.tasks import AcceptTask, split_task_id
from chorus.contracts.workflow_types import REGISTRY_ID, DefineWorkflowType
from chorus.contracts.workflows import (
    AssignPhase,
    AwaitAgent,
    CancelWorkflow,
    CompletePhase,
    ExpireLease,
    FailPhase,
    RecordPartialResult,
    ReportProgress,
    StartPhase,
    StartWorkflow,
)
from chorus.engine.domain import agent, mcp, registry, session, workflow
from chorus.engine.domain.context import EngineContext


class AggregateState(Protocol):
    id: UUID
    version: int
    last_hash: str

    def apply(self, event: msgspec.Struct) -> None: ...


Decide = Callable[[Any, Any, str, datetime, EngineContext], list[msgspec.Struct]]


@dataclass(frozen=True)
class Handler:
    """One command: its payload type, the aggregate it targets and the decision."""

    aggregate: str
    command: str
    payload: type[msgspec.Struct]
    decide: Decide
    new_state: Callable[[UUID], AggregateState]
    id_field: str = "session_id"
    fixed_id: str | None = None  # for singletons such as the type registry
    #: Turns the id field into the aggregate's UUID when it is not one (agent names).
    key: Callable[[str], UUID] | None = None
    #: For a command whose aggregate depends on its payload (``task.accept``): the
    #: handler that really takes it.
    resolve: Callable[[Any], Handler] | None = None

    def target(self, payload: Any) -> UUID:
        """The id of the aggregate instance the payload names."""
        if self.fixed_id is not None:
            return UUID(self.fixed_id)
        value = getattr(payload, self.id_field)
        return self.key(value) if self.key is not None else UUID(value)


HANDLERS: dict[tuple[str, str], Handler] = {
    (h.aggregate, h.command): h
    for h in (
        Handler("session", "open", OpenSession, session.decide_open, session.SessionState),
        Handler(
            "session", "submit_result", SubmitResult, session.decide_submit, session.SessionState
        ),
        Handler("session", "cancel", CancelSession, session.decide_cancel, session.SessionState),
        Handler("session", "timeout", TimeOutSession, session.decide_timeout, session.SessionState),
        Handler(
            "session",
            "participant_lost",
            ReportParticipantLost,
            session.decide_participant_lost,
            session.SessionState,
        ),
        Handler(
            "agent",
            "register",
            RegisterAgent,
            agent.decide_register,
            agent.AgentState,
            "name",
            key=agent_uuid,
        ),
        *(
            Handler("agent", name, payload, decide, agent.AgentState, "agent_id", key=agent_uuid)
            for name, payload, decide in (
                ("update_capabilities", UpdateCapabilities, agent.decide_update_capabilities),
                ("retire", RetireAgent, agent.decide_retire),
                ("verify_completion", VerifyCompletion, agent.decide_verify_completion),
                ("verify_completions", VerifyCompletions, agent.decide_verify_completions),
                ("mark_online", MarkOnline, agent.decide_mark_online),
                ("mark_offline", MarkOffline, agent.decide_mark_offline),
                ("lease_lost", RecordLeaseLost, agent.decide_lease_lost),
            )
        ),
        *(
            Handler("workflow", name, payload, decide, workflow.WorkflowState, "workflow_id")
            for name, payload, decide in (
                ("start", StartWorkflow, workflow.decide_start),
                ("start_phase", StartPhase, workflow.decide_start_phase),
                ("report_progress", ReportProgress, workflow.decide_report_progress),
                (
                    "record_partial_result",
                    RecordPartialResult,
                    workflow.decide_record_partial_result,
                ),
                ("complete_phase", CompletePhase, workflow.decide_complete_phase),
                ("fail_phase", FailPhase, workflow.decide_fail_phase),
                ("cancel", CancelWorkflow, workflow.decide_cancel),
                ("assign_phase", AssignPhase, workflow.decide_assign_phase),
                ("await_agent", AwaitAgent, workflow.decide_await_agent),
                ("expire_lease", ExpireLease, workflow.decide_expire_lease),
            )
        ),
        *(
            Handler(
                "mcp_server", name, payload, decide, mcp.McpServerState, "name", key=server_uuid
            )
            for name, payload, decide in (
                ("register", RegisterMcpServer, mcp.decide_register),
                ("configure", ConfigureMcpServer, mcp.decide_configure),
                ("remove", RemoveMcpServer, mcp.decide_remove),
                ("record_tools", RecordToolsDiscovered, mcp.decide_record_tools),
                ("record_call", RecordToolCall, mcp.decide_record_call),
                ("record_health", RecordHealth, mcp.decide_record_health),
            )
        ),
        Handler(
            "session",
            "accept_task",
            AcceptTask,
            session.decide_accept_task,
            session.SessionState,
            "task_id",
        ),
        Handler(
            "workflow",
            "accept_task",
            AcceptTask,
            workflow.decide_accept_task,
            workflow.WorkflowState,
            "task_id",
            key=lambda task_id: UUID(split_task_id(task_id)[0]),
        ),
        Handler(
            "workflow_type",
            "define",
            DefineWorkflowType,
            registry.decide_define,
            registry.RegistryState,
            fixed_id=REGISTRY_ID,
        ),
    )
}


def _task_handler(payload: AcceptTask) -> Handler:
    """A task id names a session, or ``<workflow_id>/<phase>``."""
    kind = "session" if split_task_id(payload.task_id)[1] is None else "workflow"
    return HANDLERS[(kind, "accept_task")]


#: ``chorus.cmd.<agent>.task.accept``: routed by its task id to the session or workflow.
HANDLERS[("task", "accept")] = Handler(
    "task", "accept", AcceptTask, workflow.decide_accept_task, workflow.WorkflowState,
    "task_id", resolve=_task_handler,
)  # fmt: skip

#: One typed decoder per command, built once: decoding happens once, at the edge.
DECODERS: dict[tuple[str, str], msgspec.json.Decoder[Any]] = {
    key: msgspec.json.Decoder(Envelope[h.payload])  # type: ignore[name-defined]
    for key, h in HANDLERS.items()
}
