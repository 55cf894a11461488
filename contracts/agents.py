"""Command payloads for agents (``chorus.cmd.<actor>.agent.<command>``).

An agent's id is its registered name, and it is the actor token the agent uses on the
bus: ``chorus.cmd.<agent_id>.agent.heartbeat`` and ``chorus.cmd.<agent_id>.session.*``.
The engine keys the agent aggregate by ``agent_uuid(agent_id)``.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from chorus.contracts.roles import name_problem
from chorus.contracts.sessions import Capability, Id
from msgspec import Meta, Struct

AGENT_NAMESPACE = uuid.UUID("6c0a6f9e-4a59-4d43-9b61-6167656e7473")
Capabilities = Annotated[list[Capability], Meta(max_length=100)]
AgentType = Annotated[str, Meta(min_length=1, max_length=64)]
OutputHash = Annotated[str, Meta(min_length=1, max_length=200)]
#: A task is a session the agent took part in (its id), or a workflow phase
#: (``<workflow_id>/<phase>``).
TaskId = Annotated[str, Meta(min_length=1, max_length=200)]
#: A registered MCP server's name (``chorus.contracts.mcp``).
ServerName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")]
Digest = Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}$")]


class ToolCallRef(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A tool call on record that completion evidence cites: the ``ToolCalled`` event at
    ``version`` of server ``server``'s aggregate (a call's answer gives it as
    ``recorded_version``). It must be the agent's own call, made for the task, that
    succeeded; ``result_digest``, when given, must be the recorded digest of its result."""

    server: ServerName
    version: Annotated[int, Meta(ge=1)]
    result_digest: Digest | None = None


_canonical = msgspec.json.Encoder(order="sorted")


def result_hash(result: dict[str, Any]) -> str:
    """The hash recorded for a result submitted without its own ``output_hash``:
    ``sha256:`` + hex sha256 of its canonical JSON (sorted keys, no whitespace)."""
    return "sha256:" + hashlib.sha256(_canonical.encode(result)).hexdigest()


def agent_uuid(agent_id: str) -> uuid.UUID:
    """The agent aggregate's id: derived from the name, so a name is registered once."""
    return uuid.uuid5(AGENT_NAMESPACE, agent_id)


class RegisterAgent(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Register ``name`` (the agent id). An agent registers itself (the actor is the name);
    an operator may register one for it. The registering actor becomes its owner:
    registering again is idempotent for the owner and rejected for anyone else."""

    name: Id
    type: AgentType = "generic"
    capabilities: Capabilities = []
    metadata: dict[str, Any] = {}
    #: How many tasks (workflow phases) the dispatcher may give it at once.
    max_concurrency: Annotated[int, Meta(ge=1, le=10_000)] = 1

    def __post_init__(self) -> None:
        problem = name_problem(self.name)
        if problem is not None:
            raise ValueError(problem)


class CapabilitiesChange(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An agent's new capabilities (the HTTP body; the bus command adds ``agent_id``)."""

    capabilities: Capabilities


class UpdateCapabilities(CapabilitiesChange, kw_only=True, frozen=True, forbid_unknown_fields=True):
    agent_id: Id


class Retirement(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Why an agent is retired (the HTTP body; the bus command adds ``agent_id``)."""

    reason: Annotated[str, Meta(min_length=1, max_length=2000)] = "retired"


class RetireAgent(Retirement, kw_only=True, frozen=True, forbid_unknown_fields=True):
    agent_id: Id


class Heartbeat(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Optional body of a heartbeat; an empty message is a heartbeat of the actor."""

    agent_id: Id | None = None


class MarkOnline(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Issued by the engine's liveness monitor when a heartbeat ends an absence."""

    agent_id: Id
    last_seen: datetime


class MarkOffline(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Issued by the engine's liveness monitor after the configured missed heartbeats."""

    agent_id: Id
    last_seen: datetime
    missed_heartbeats: int


class VerifyCompletion(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An agent's claim that it completed a task, with the evidence to check it by.

    ``output_hash`` must equal the hash recorded with the agent's submitted result: the
    ``output_hash`` it gave, else ``sha256:`` + hex sha256 of the result's canonical JSON
    (keys sorted, no whitespace). ``response_time`` is in seconds; without it the time from
    assignment to ``completion_time`` is used.
    """

    agent_id: Id
    task_id: TaskId
    completion_time: Annotated[datetime, Meta(tz=True)]
    output_hash: OutputHash
    response_time: Annotated[float, Meta(ge=0, le=30 * 86_400)] | None = None
    #: Tool calls the result came from (each checked against the record, see ToolCallRef).
    tool_calls: Annotated[list[ToolCallRef], Meta(max_length=100)] = []

    def __post_init__(self) -> None:
        try:  # a zone offset can push a valid local time past the year 9999 in UTC
            self.completion_time.astimezone(UTC)
        except OverflowError:
            raise ValueError("completion_time is out of range in UTC") from None


#: The most claims one ``verify_completions`` carries.
MAX_CLAIMS = 100


class VerifyCompletions(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Several claims of one agent in one command, each judged as if it came alone (in
    order: a second claim of one task is ``already_verified``). Every claim names the
    command's ``agent_id`` (a claim for another agent refuses the whole command): one
    agent's claims, so one rule authorizes them all. The SDK worker sends the claims that
    piled up for a moment in one, which spares the engine a command per task."""

    agent_id: Id
    claims: Annotated[list[VerifyCompletion], Meta(min_length=1, max_length=MAX_CLAIMS)]


class RecordLeaseLost(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Issued by the dispatcher: the agent lost the lease of a task it was given (it did
    not accept it, finish it, or stay in touch in time). It counts against its record."""

    agent_id: Id
    task_id: TaskId
    attempt: Annotated[int, Meta(ge=1)]
    reason: Annotated[str, Meta(min_length=1, max_length=200)]


AGENT_COMMANDS: dict[str, type[Struct]] = {
    "register": RegisterAgent,
    "update_capabilities": UpdateCapabilities,
    "retire": RetireAgent,
    "verify_completion": VerifyCompletion,
    "verify_completions": VerifyCompletions,
    "mark_online": MarkOnline,
    "mark_offline": MarkOffline,
    "lease_lost": RecordLeaseLost,
}

#: Commands only the engine itself issues (refused on the bus).
ENGINE_ONLY = frozenset({("agent", "mark_online"), ("agent", "mark_offline"),
                         ("session", "timeout"), ("session", "participant_lost"),
                         ("workflow", "assign_phase"), ("workflow", "await_agent"),
                         ("workflow", "expire_lease"), ("agent", "lease_lost"),
                         # reached through ``task.accept``, which picks one by the task id
                         ("session", "accept_task"), ("workflow", "accept_task")})  # fmt: skip
