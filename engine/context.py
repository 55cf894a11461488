"""What decisions may consult besides the aggregate's own state (passed in, never global)."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.workflow_types import WorkflowTypeRegistry


@dataclass(frozen=True)
class EngineContext:
    workflow_types: WorkflowTypeRegistry = field(default_factory=WorkflowTypeRegistry)
