"""The tools Chorus offers over MCP: an agent's whole loop, one table.

Each command tool's input schema is the JSON Schema of the contract struct the bus decodes
(``contracts/*.py``), so MCP, NATS and HTTP accept exactly the same payloads; an id the
caller may leave out (a new session's or workflow's) is made optional and filled in here.
Every tool runs as the caller's actor through the same command bus as the HTTP gateway, and
the engine authorizes it the same way. Failures carry the same stable codes.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from chorus.contracts import errors as codes
from chorus.contracts.agents import Heartbeat, RegisterAgent, VerifyCompletion
from chorus.contracts.envelope import Reply
from chorus.contracts.mcp import CallTool, ServerName
from chorus.contracts.sessions import CancelSession, Id, OpenSession, SessionId, SubmitResult
from chorus.contracts.tasks import AcceptTask
from chorus.contracts.workflows import (
    CompletePhase,
    FailPhase,
    RecordPartialResult,
    ReportProgress,
    StartPhase,
    StartWorkflow,
)
from chorus.gateway.agents import _as_of, _fresh_agent, _verdict, send_heartbeat, tool_capabilities
from chorus.gateway.auth import READERS, WRITERS
from chorus.gateway.errors import Problem
from chorus.gateway.keys import Principal
from chorus.gateway.mcp_bus import call_over_bus
from chorus.gateway.mcp_registry import CallBody, run_tool_call
from chorus.gateway.state import Services
from chorus.gateway.workflows import workflow_status
from chorus.projections import agents as agents_model
from chorus.projections import mcp as mcp_model
from chorus.projections import sessions as sessions_model
from chorus.projections import tasks as tasks_model
from chorus.projections import workflows as workflows_model
from msgspec import Meta, Struct


@dataclass(frozen=True)
class Caller:
    """Who calls a tool (from the credential) and what the call may use."""

    principal: Principal
    services: Services
    #: Send registered-tool calls over the bus (``chorus mcp``) instead of running them here.
    tools_over_bus: bool = False


Run = Callable[[Caller, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    """One MCP tool: the payload type its arguments decode to, who may call it, what it does."""

    name: str
    description: str
    payload: type[Struct]
    run: Run
    roles: frozenset[str] = WRITERS
    #: Fields of ``payload`` the caller may omit: each is filled with a new UUID.
    generated: tuple[str, ...] = ()
    read_only: bool = False
    schema: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", input_schema(self.payload, self.generated))

    def decode(self, arguments: dict[str, Any] | None) -> Any:
        """The typed payload, decoded exactly as the bus decodes it (400 codes on failure)."""
        args = dict(arguments or {})
        for name in self.generated:
            if args.get(name) is None:
                args[name] = str(uuid.uuid4())
        try:
            return msgspec.json.decode(msgspec.json.encode(args), type=self.payload)
        except msgspec.ValidationError as error:
            raise Problem(400, codes.INVALID_COMMAND, str(error)) from None


def input_schema(payload: type[Struct], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON Schema of ``payload`` with its own definition at the top (MCP wants an
    object schema there) and the others kept under ``$defs`` for references."""
    document = msgspec.json.schema(payload)
    defs: dict[str, Any] = document.get("$defs", {})
    name = document["$ref"].rsplit("/", 1)[-1]
    top = dict(defs.pop(name))
    top.pop("title", None)
    if optional:
        top["required"] = [f for f in top.get("required", []) if f not in optional]
    if defs:
        top["$defs"] = defs
    # References point at "#/$defs/<name>" in both layouts; the top one is never referenced
    # by its own fields except through recursion, which the contracts do not have.
    return top


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


async def _command(
    caller: Caller, aggregate: str, command: str, payload: Struct, read_model: str
) -> Reply:
    """Send as the caller; wait (bounded) until ``read_model`` shows the change."""
    reply = await caller.services.bus.send(caller.principal.actor, aggregate, command, payload)
    await caller.services.wait_for_projection(read_model, reply.position)
    return reply


def _outcome(reply: Reply, **ids: str) -> dict[str, Any]:
    return {**ids, "command_status": reply.status, "version": reply.version}


# --- sessions -------------------------------------------------------------------------


class SessionRef(Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


class ListSessions(Struct, kw_only=True, forbid_unknown_fields=True):
    status: str | None = None
    participant: Id | None = None
    limit: Annotated[int, Meta(ge=1, le=500)] = 50
    cursor: str | None = None


async def session_view(caller: Caller, session_id: str) -> Any:
    view = await caller.services.read(sessions_model.get_session, session_id)
    if view is None:
        raise Problem(404, codes.SESSION_NOT_FOUND, f"session {session_id} does not exist")
    return view


async def open_session(caller: Caller, payload: OpenSession) -> Any:
    reply = await _command(caller, "session", "open", payload, sessions_model.NAME)
    assert reply.aggregate_id is not None
    return await session_view(caller, reply.aggregate_id)


async def submit_result(caller: Caller, payload: SubmitResult) -> Any:
    reply = await _command(caller, "session", "submit_result", payload, sessions_model.NAME)
    return _outcome(reply, session_id=payload.session_id)


async def cancel_session(caller: Caller, payload: CancelSession) -> Any:
    await _command(caller, "session", "cancel", payload, sessions_model.NAME)
    return await session_view(caller, payload.session_id)


async def get_session(caller: Caller, payload: SessionRef) -> Any:
    return await session_view(caller, payload.session_id)


async def list_sessions(caller: Caller, payload: ListSessions) -> Any:
    return await caller.services.read(
        sessions_model.list_sessions, status=payload.status, participant=payload.participant,
        limit=payload.limit, cursor=payload.cursor,
    )  # fmt: skip


# --- workflows ------------------------------------------------------------------------


class WorkflowRef(Struct, kw_only=True, forbid_unknown_fields=True):
    workflow_id: SessionId


async def start_workflow(caller: Caller, payload: StartWorkflow) -> Any:
    reply = await _command(caller, "workflow", "start", payload, workflows_model.NAME)
    assert reply.aggregate_id is not None
    return await workflow_status(uuid.UUID(reply.aggregate_id), caller.services)


async def get_workflow(caller: Caller, payload: WorkflowRef) -> Any:
    return await workflow_status(uuid.UUID(payload.workflow_id), caller.services)


def _phase_command(command: str) -> Run:
    async def run(caller: Caller, payload: Any) -> Any:
        await _command(caller, "workflow", command, payload, workflows_model.NAME)
        return await workflow_status(uuid.UUID(payload.workflow_id), caller.services)

    return run


# --- agents ---------------------------------------------------------------------------


class ListAgents(Struct, kw_only=True, forbid_unknown_fields=True):
    capability: list[str] = []
    tool: list[str] = []
    status: list[str] = []
    min_success_rate: Annotated[float, Meta(ge=0, le=1)] | None = None
    sort: str = "registered"
    limit: Annotated[int, Meta(ge=1, le=500)] = 50
    cursor: str | None = None


class AgentMetrics(Struct, kw_only=True, forbid_unknown_fields=True):
    agent_id: Id
    timeframe: str = "24h"
    as_of: str | None = None


def _choice(name: str, value: str, allowed: Any) -> None:
    if value not in allowed:
        raise Problem(
            400, codes.INVALID_COMMAND, f"{name} must be one of: {', '.join(allowed)}",
            details={"field": name, "allowed": list(allowed)},
        )  # fmt: skip


async def register_agent(caller: Caller, payload: RegisterAgent) -> Any:
    reply = await caller.services.bus.send(caller.principal.actor, "agent", "register", payload)
    return await _fresh_agent(caller.services, payload.name, reply.position)


async def heartbeat(caller: Caller, payload: Heartbeat) -> Any:
    return await send_heartbeat(
        caller.principal, caller.services, payload.agent_id or caller.principal.actor
    )


async def verify_completion(caller: Caller, payload: VerifyCompletion) -> Any:
    reply = await caller.services.bus.send(
        caller.principal.actor, "agent", "verify_completion", payload
    )
    return await _verdict(caller.services, payload.agent_id, reply)


async def list_agents(caller: Caller, payload: ListAgents) -> Any:
    for value in payload.status:
        _choice("status", value, agents_model.STATUSES)
    _choice("sort", payload.sort, agents_model.SORTS)
    return await caller.services.read(
        agents_model.list_agents,
        capabilities=[*payload.capability, *tool_capabilities(payload.tool)], statuses=payload.status,
        min_success_rate=payload.min_success_rate, sort=payload.sort, limit=payload.limit,
        cursor=payload.cursor,
    )  # fmt: skip


async def agent_metrics(caller: Caller, payload: AgentMetrics) -> Any:
    _choice("timeframe", payload.timeframe, tuple(agents_model.TIMEFRAMES))
    found = await caller.services.read(
        agents_model.agent_metrics, payload.agent_id, payload.timeframe, _as_of(payload.as_of)
    )
    if found is None:
        raise Problem(404, codes.AGENT_NOT_FOUND, f"agent {payload.agent_id} is not registered")
    return found


# --- the inbox --------------------------------------------------------------------------


class MyTasks(Struct, kw_only=True, forbid_unknown_fields=True):
    """No arguments: the tasks are always the caller's own."""


async def my_tasks(caller: Caller, payload: MyTasks) -> Any:
    """The caller's open tasks, as its inbox ``chorus.task.<actor>`` delivers them."""
    return await caller.services.read(tasks_model.list_agent_tasks, caller.principal.actor)


async def accept_task(caller: Caller, payload: AcceptTask) -> Any:
    """Acknowledge a task from the inbox (accepting a phase starts it)."""
    reply = await caller.services.bus.send(caller.principal.actor, "task", "accept", payload)
    return _outcome(reply, task_id=payload.task_id)


# --- registered MCP servers -----------------------------------------------------------


async def call_registered_tool(caller: Caller, payload: CallTool) -> Any:
    """In the gateway the call runs here; ``chorus mcp`` sends it over the bus
    (``tool.call``) to a gateway, which holds the servers' secrets and records calls."""
    if caller.tools_over_bus:
        return await call_over_bus(caller.services.nc, caller.services, caller.principal.actor,
                                   payload)  # fmt: skip
    body = CallBody(arguments=payload.arguments, task_id=payload.task_id)
    return await run_tool_call(caller.principal, caller.services, payload.server,
                               payload.tool, body)  # fmt: skip


async def list_registered_tools(caller: Caller, payload: ServerFilter) -> Any:
    return {"tools": await caller.services.read(mcp_model.list_tools, payload.server)}


class ServerFilter(Struct, kw_only=True, forbid_unknown_fields=True):
    server: ServerName | None = None


def _tools(*tools: Tool) -> dict[str, Tool]:
    return {t.name: t for t in tools}


#: Every tool, by name. Readers may query; writers (agents, operators, admins) may act.
TOOLS: dict[str, Tool] = _tools(
    Tool(
        "open_session",
        "Open a coordination session (you are its opener; name participants, "
        "or give size and capabilities to route to the most reliable agents).",
        OpenSession,
        open_session,
        generated=("session_id",),
    ),
    Tool(
        "get_session",
        "A session's current state.",
        SessionRef,
        get_session,
        READERS,
        read_only=True,
    ),
    Tool(
        "list_sessions",
        "Sessions, newest first (filter by status or participant).",
        ListSessions,
        list_sessions,
        READERS,
        read_only=True,
    ),
    Tool(
        "submit_result",
        "Submit your result to a session you take part in.",
        SubmitResult,
        submit_result,
    ),
    Tool(
        "cancel_session",
        "Cancel a session you opened or coordinate.",
        CancelSession,
        cancel_session,
    ),
    Tool(
        "start_workflow",
        "Start a workflow of a registered type.",
        StartWorkflow,
        start_workflow,
        generated=("workflow_id",),
    ),
    Tool(
        "workflow_status",
        "A workflow's status, phases and progress.",
        WorkflowRef,
        get_workflow,
        READERS,
        read_only=True,
    ),
    Tool(
        "start_phase",
        "Start the workflow's next phase for its assignee (default: you); the workflow's "
        "starter, operators and admins only.",
        StartPhase,
        _phase_command("start_phase"),
    ),
    Tool(
        "report_progress",
        "Report progress (0-100) on the phase assigned to you.",
        ReportProgress,
        _phase_command("report_progress"),
    ),
    Tool(
        "record_partial_result",
        "Record a partial result of the phase assigned to you.",
        RecordPartialResult,
        _phase_command("record_partial_result"),
    ),
    Tool(
        "complete_phase",
        "Complete the phase assigned to you, with its result.",
        CompletePhase,
        _phase_command("complete_phase"),
    ),
    Tool(
        "fail_phase",
        "Fail the phase assigned to you, with an error code and message.",
        FailPhase,
        _phase_command("fail_phase"),
    ),
    Tool(
        "my_tasks",
        "Your open tasks (workflow phases and sessions assigned to you), oldest first.",
        MyTasks,
        my_tasks,
        READERS,
        read_only=True,
    ),
    Tool(
        "accept_task",
        "Accept a task from your inbox (a phase task starts the phase); stops redelivery.",
        AcceptTask,
        accept_task,
    ),
    Tool(
        "register_agent",
        "Register an agent (yourself, by your actor name); your key becomes its owner.",
        RegisterAgent,
        register_agent,
    ),
    Tool("heartbeat", "Say you are alive (agent_id defaults to you).", Heartbeat, heartbeat),
    Tool(
        "verify_completion",
        "Submit completion evidence for a task (cite the tool calls on record that the "
        "result came from in tool_calls); returns the engine's verdict.",
        VerifyCompletion,
        verify_completion,
    ),
    Tool(
        "list_agents",
        "Agents with their reliability (filter by capability, status, "
        "minimum success rate; sort by registered or reliability).",
        ListAgents,
        list_agents,
        READERS,
        read_only=True,
    ),
    Tool(
        "list_registered_tools",
        "Tools of the MCP servers registered with Chorus (optionally of one server).",
        ServerFilter,
        list_registered_tools,
        READERS,
        read_only=True,
    ),
    Tool(
        "call_registered_tool",
        "Call a tool of a registered MCP server through Chorus: arguments checked against "
        "its schema, the call recorded (give task_id when it is for a task).",
        CallTool,
        call_registered_tool,
    ),
    Tool(
        "agent_metrics",
        "An agent's reliability over a window (1h, 24h, 7d, all).",
        AgentMetrics,
        agent_metrics,
        READERS,
        read_only=True,
    ),
)
