"""What decisions may consult besides the aggregate's own state (passed in, never global)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from contracts.workflow_types import WorkflowType, WorkflowTypeRegistry


def _none(refresh: bool = False) -> list[WorkflowType]:
    return []


def _nobody(actor: str) -> bool:
    return False


@dataclass(frozen=True)
class EngineContext:
    #: Built-in and file-defined types.
    workflow_types: WorkflowTypeRegistry = field(default_factory=WorkflowTypeRegistry)
    #: Types defined over the API (the registry aggregate); the processor supplies it.
    defined_types: Callable[..., list[WorkflowType]] = _none
    #: Whether an actor holds an operator (or admin) credential; the composition root
    #: wires it to the key store, which the engine itself does not know.
    is_operator: Callable[[str], bool] = _nobody

    def registry(self, refresh: bool = False) -> WorkflowTypeRegistry:
        """Every type a workflow may use now; ``refresh`` re-reads the defined ones."""
        return self.workflow_types.with_defined(self.defined_types(refresh=refresh))
