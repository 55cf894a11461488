"""What decisions may consult besides the aggregate's own state (passed in, never global)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from chorus.contracts.roles import STAFF
from chorus.contracts.workflow_types import WorkflowType, WorkflowTypeRegistry
from chorus.engine.domain.authz import Roles, StaticRoles


def _none(refresh: bool = False) -> list[WorkflowType]:
    return []


def _no_store(aggregate: str, aggregate_id: UUID) -> Any:
    raise LookupError("this decision has no access to other aggregates")


def _no_agents() -> Iterable[Any]:
    return ()


def _none_held(actor: str) -> int:
    return 0


@dataclass(frozen=True)
class EngineContext:
    #: Built-in and file-defined types.
    workflow_types: WorkflowTypeRegistry = field(default_factory=WorkflowTypeRegistry)
    #: Types defined over the API (the registry aggregate); the processor supplies it.
    defined_types: Callable[..., list[WorkflowType]] = _none
    #: An actor's roles; the composition root wires it to the key store, which the engine
    #: itself does not know (engine/domain/authz.py checks every command against them).
    roles: Roles = field(default_factory=StaticRoles)
    #: Another aggregate's current state, read-only (completion evidence looks up the
    #: task's session or workflow). The processor supplies it.
    load: Callable[[str, UUID], Any] = _no_store
    #: Every registered agent's state as this engine last read it (for routing). The
    #: processor supplies it.
    agents: Callable[[], Iterable[Any]] = _no_agents
    #: Open sessions naming other agents that an actor opened (engine/policies/quota.py); the
    #: processor supplies it.
    sessions_held: Callable[[str], int] = _none_held
    #: How many of those one agent may hold (0: no bound); staff are never bound.
    session_quota: int = 0

    def is_operator(self, actor: str) -> bool:
        """Whether ``actor`` holds an operator or admin role (the key store says)."""
        return bool(self.roles.roles_of(actor) & STAFF)

    def registry(self, refresh: bool = False) -> WorkflowTypeRegistry:
        """Every type a workflow may use now; ``refresh`` re-reads the defined ones."""
        return self.workflow_types.with_defined(self.defined_types(refresh=refresh))
