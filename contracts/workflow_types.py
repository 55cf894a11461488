"""Workflow types: named, ordered lists of phases, from built-ins and an operator's file.

Shared by the engine (which rejects unknown types) and the gateway (which lists them), so
it lives with the contracts. A phase may be delegated to a coordination session.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from contracts.sessions import Capability, Criteria, Id, LostPolicy

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


class Phase(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: Name
    expected_seconds: Annotated[int, Meta(ge=1, le=30 * 86_400)] = 600
    delegate: Delegation | None = None


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


class TypesFile(Struct, forbid_unknown_fields=True):
    workflow_types: list[WorkflowType]


class WorkflowTypeRegistry:
    """Built-in types, overridden or extended by an operator's TOML file."""

    def __init__(self, types: tuple[WorkflowType, ...] | list[WorkflowType] = BUILT_IN) -> None:
        self._types = {t.name: t for t in types}

    @classmethod
    def load(cls, path: Path | None = None) -> WorkflowTypeRegistry:
        """Built-ins plus the ``[[workflow_types]]`` of ``path`` (a type of the same name
        replaces the built-in). Raises ValueError naming what is wrong in the file."""
        registry = cls()
        if path is None:
            return registry
        try:
            raw = tomllib.loads(path.read_text())
            extra = msgspec.convert(raw, TypesFile)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError, OSError) as error:
            raise ValueError(f"workflow types file {path}: {error}") from error
        for workflow_type in extra.workflow_types:
            registry._types[workflow_type.name] = workflow_type
        return registry

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
