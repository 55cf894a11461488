"""Workflow types: named, ordered lists of phases, built in or defined by an operator.

Shared by the engine (which rejects unknown types) and the gateway (which lists them), so
it lives with the contracts. A phase may be delegated to a coordination session. The
operator's TOML file is read by the composition root (``chorus.typesfile``).
"""

from __future__ import annotations

from typing import Annotated

from chorus.contracts.sessions import Capability, Criteria, Id, LostPolicy, ToolRef, require_tools
from msgspec import Meta, Struct

Name = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")]


class Delegation(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Run this phase as a coordination session: named participants, or ``size`` agents
    with the required ``capabilities``."""

    participants: list[Id] | None = None
    capabilities: list[Capability] | None = None
    size: Annotated[int, Meta(ge=1, le=1000)] | None = None
    criteria: Criteria = Criteria()
    timeout_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 600
    on_participant_lost: LostPolicy = "wait"

    def __post_init__(self) -> None:
        if not self.participants and not (self.capabilities and self.size):
            raise ValueError("a delegation names participants, or capabilities and size")


Seconds = Annotated[int, Meta(ge=1, le=30 * 86_400)]


class Backoff(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How long a phase waits before its next attempt after a lost lease or a failure:
    ``initial_seconds * multiplier ** (attempt - 1)``, at most ``max_seconds``."""

    initial_seconds: Annotated[float, Meta(ge=0, le=86_400)] = 1.0
    multiplier: Annotated[float, Meta(ge=1, le=100)] = 2.0
    max_seconds: Annotated[float, Meta(ge=0, le=86_400)] = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` >= 1 just ended)."""
        return min(self.max_seconds, self.initial_seconds * self.multiplier ** (attempt - 1))


class Phase(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One step of a workflow type, and how the dispatcher hands it out.

    The dispatcher gives the phase to the most reliable online agent holding every one of
    ``capabilities`` (none: any agent) with a free slot. Like a Temporal activity's
    options: the attempt must be acknowledged within ``accept_seconds`` (default: the
    lease), finish within ``lease_seconds`` of its assignment (start-to-close), and, if
    ``heartbeat_seconds`` is set, report progress at least that often. A lost lease starts
    a new attempt on another agent, after ``backoff``, up to ``max_attempts``; then the
    phase fails.
    """

    name: Name
    expected_seconds: Seconds = 600
    delegate: Delegation | None = None
    capabilities: Annotated[list[Capability], Meta(max_length=100)] = []
    #: Tools the agent must be able to use (``<server>/<tool>``), added to ``capabilities``.
    requires_tools: Annotated[list[ToolRef], Meta(max_length=100)] = []
    lease_seconds: Seconds = 600
    accept_seconds: Seconds | None = None
    heartbeat_seconds: Seconds | None = None
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 3
    backoff: Backoff = Backoff()

    def __post_init__(self) -> None:
        require_tools(self)


class WorkflowType(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: Name
    description: str = ""
    phases: Annotated[list[Phase], Meta(min_length=1, max_length=100)]

    def __post_init__(self) -> None:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"workflow type {self.name}: phase names must be unique")


def _phases(*names: str, minutes: int = 30) -> list[Phase]:
    return [Phase(name=n, expected_seconds=minutes * 60) for n in names]


BUILT_IN: tuple[WorkflowType, ...] = (
    WorkflowType(
        name="full",
        description="From requirements to a reviewed change",
        phases=_phases("requirements", "design", "implement", "test", "review"),
    ),
    WorkflowType(
        name="quick",
        description="Implement and check, for small changes",
        phases=_phases("implement", "test", minutes=15),
    ),
    WorkflowType(
        name="review",
        description="An independent review of existing work",
        phases=_phases("review", minutes=20),
    ),
)


#: The one registry aggregate that records types defined over the API.
REGISTRY_ID = "6f1d9b52-5c1e-5d3a-9a51-726567697374"


class DefineWorkflowType(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``chorus.cmd.<actor>.workflow_type.define``: add or replace a type (admins)."""

    workflow_type: WorkflowType


class WorkflowTypeRegistry:
    """Built-in types, overridden or extended by an operator's file or by the API."""

    def __init__(self, types: tuple[WorkflowType, ...] | list[WorkflowType] = BUILT_IN) -> None:
        self._types = {t.name: t for t in types}

    def get(self, name: str) -> WorkflowType | None:
        return self._types.get(name)

    def all(self) -> list[WorkflowType]:
        return sorted(self._types.values(), key=lambda t: t.name)

    def with_defined(self, defined: list[WorkflowType]) -> WorkflowTypeRegistry:
        """This registry plus the types defined over the API (they win on a name clash)."""
        merged = WorkflowTypeRegistry(list(self._types.values()))
        for workflow_type in defined:
            merged._types[workflow_type.name] = workflow_type
        return merged
