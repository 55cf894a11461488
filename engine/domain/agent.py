"""The Agent aggregate: registration, liveness transitions and verified completions.

Keyed by ``agent_uuid(agent_id)``. Heartbeats never reach this aggregate: the liveness
monitor (engine/adapters/liveness.py) keeps them in a JetStream KV bucket and sends
``mark_online`` / ``mark_offline`` only when the status changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
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
)
from chorus.engine.domain import errors
from chorus.engine.domain.context import EngineContext
from chorus.engine.domain.evidence import canonical_task_id, judge
from chorus.events.agent import (
    AgentCameOnline,
    AgentCapabilitiesUpdated,
    AgentConcurrencyChanged,
    AgentRegistered,
    AgentRetired,
    AgentWentOffline,
    CompletionRejected,
    CompletionVerified,
    TaskLeaseLost,
)
from chorus.events.agent_status import status_after
from chorus.events.codec import GENESIS_HASH
from chorus.events.reliability import reliability_score

AGGREGATE = "agent"


@dataclass
class AgentState:
    id: UUID
    version: int = 0
    last_hash: str = GENESIS_HASH
    agent_id: str = ""
    type: str = ""
    owner: str = ""
    status: str = "new"  # online | offline | retired
    capabilities: frozenset[str] = frozenset()
    metadata: dict[str, Any] = field(default_factory=dict)
    last_seen: datetime | None = None
    verified: int = 0
    rejected: int = 0
    verified_tasks: set[str] = field(default_factory=set)
    max_concurrency: int = 1

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def score(self) -> float:
        return reliability_score(self.verified, self.rejected)

    def apply(self, event: msgspec.Struct) -> None:
        self.status = status_after(event, self.status)
        match event:
            case AgentRegistered():
                self.agent_id = event.agent_id
                self.type = event.type
                self.owner = event.owner
                self.capabilities = frozenset(event.capabilities)
                self.metadata = dict(event.metadata)
                self.last_seen = event.registered_at
                self.max_concurrency = event.max_concurrency
            case AgentConcurrencyChanged():
                self.max_concurrency = event.max_concurrency
            case TaskLeaseLost():
                self.rejected += 1
            case AgentCapabilitiesUpdated():
                self.capabilities = frozenset(event.capabilities)
            case AgentRetired():
                pass  # the status rule (chorus.events.agent_status) is all it changes
            case AgentCameOnline() | AgentWentOffline():
                self.last_seen = event.last_seen
            case CompletionVerified():
                self.verified += event.counts
                self.verified_tasks.add(canonical_task_id(event.task_id))
            case CompletionRejected():
                self.rejected += event.counts
            case _:
                raise TypeError(f"not an agent event: {type(event).__name__}")
        self.version += 1

    # Named checks -------------------------------------------------------------------------

    def check_exists(self, agent_id: str) -> None:
        if not self.exists:
            raise errors.AgentNotFound(f"agent {agent_id} is not registered")

    def check_not_retired(self) -> None:
        if self.status == "retired":
            raise errors.AgentRetired(f"agent {self.agent_id} is retired")


# Decisions ----------------------------------------------------------------------------------


def decide_register(
    state: AgentState,
    cmd: RegisterAgent,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """Idempotent for the owner: the same registration again records nothing, new
    capabilities are recorded as an update. Anyone else is refused the name."""
    if state.exists:
        if actor != state.owner:
            raise errors.AgentNameTaken(
                f"agent name {cmd.name!r} is registered by another key holder"
            )
        state.check_not_retired()
        changes = _capabilities_change(state, cmd.capabilities, actor)
        if cmd.max_concurrency != state.max_concurrency:
            changes.append(AgentConcurrencyChanged(max_concurrency=cmd.max_concurrency))
        return changes
    return [
        AgentRegistered(
            agent_id=cmd.name,
            type=cmd.type,
            capabilities=sorted(set(cmd.capabilities)),
            metadata=cmd.metadata,
            owner=actor,
            registered_at=now,
            max_concurrency=cmd.max_concurrency,
        )
    ]


def decide_update_capabilities(
    state: AgentState,
    cmd: UpdateCapabilities,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists(cmd.agent_id)  # who may: engine/domain/authz.py
    state.check_not_retired()
    return _capabilities_change(state, cmd.capabilities, actor)


def decide_retire(
    state: AgentState,
    cmd: RetireAgent,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists(cmd.agent_id)  # who may: engine/domain/authz.py
    state.check_not_retired()
    return [AgentRetired(reason=cmd.reason, retired_by=actor)]


def decide_mark_online(
    state: AgentState,
    cmd: MarkOnline,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists(cmd.agent_id)
    if state.status != "offline":
        raise errors.NoChange(f"agent {cmd.agent_id} is {state.status}")
    return [AgentCameOnline(last_seen=cmd.last_seen)]


def decide_mark_offline(
    state: AgentState,
    cmd: MarkOffline,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists(cmd.agent_id)
    if state.status != "online":
        raise errors.NoChange(f"agent {cmd.agent_id} is {state.status}")
    if state.last_seen is not None and cmd.last_seen < state.last_seen:
        raise errors.NoChange(f"agent {cmd.agent_id} was seen after {cmd.last_seen}")
    return [AgentWentOffline(last_seen=cmd.last_seen, missed_heartbeats=cmd.missed_heartbeats)]


def decide_verify_completion(
    state: AgentState,
    cmd: VerifyCompletion,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """Always records a verdict (verified, or rejected with every failed check)."""
    state.check_exists(cmd.agent_id)  # who may: engine/domain/authz.py
    return [judge(cmd, state.verified_tasks, now, ctx or EngineContext())]


def decide_verify_completions(
    state: AgentState,
    cmd: VerifyCompletions,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """A verdict per claim, in order, each judged as if it came alone."""
    state.check_exists(cmd.agent_id)  # who may: engine/domain/authz.py
    others = sorted({claim.agent_id for claim in cmd.claims} - {cmd.agent_id})
    if others:
        raise errors.InvalidCommand(
            f"every claim must be {cmd.agent_id}'s own, not {', '.join(others)}'s",
            {"agents": others},
        )
    verified = set(state.verified_tasks)
    verdicts: list[msgspec.Struct] = []
    for claim in cmd.claims:
        verdict = judge(claim, verified, now, ctx or EngineContext())
        if isinstance(verdict, CompletionVerified):
            verified.add(verdict.task_id)
        verdicts.append(verdict)
    return verdicts


def decide_lease_lost(
    state: AgentState,
    cmd: RecordLeaseLost,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists(cmd.agent_id)
    return [TaskLeaseLost(task_id=cmd.task_id, attempt=cmd.attempt, reason=cmd.reason,
                          lost_at=now)]  # fmt: skip


def _capabilities_change(
    state: AgentState, capabilities: list[str], actor: str
) -> list[msgspec.Struct]:
    """An update if the set differs, else nothing: capabilities are a set, kept sorted."""
    if frozenset(capabilities) == state.capabilities:
        return []
    return [AgentCapabilitiesUpdated(capabilities=sorted(set(capabilities)), updated_by=actor)]
