"""The workflow type registry aggregate: types defined over the API, as events.

One instance (``REGISTRY_ID``). Its state is the defined types; decisions on workflows
see them merged over the built-in and file types through ``EngineContext``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import msgspec
from chorus.contracts.workflow_types import DefineWorkflowType, WorkflowType
from chorus.engine.domain.context import EngineContext
from chorus.events.codec import GENESIS_HASH
from chorus.events.workflow import WorkflowTypeDefined


@dataclass
class RegistryState:
    id: UUID
    version: int = 0
    last_hash: str = GENESIS_HASH
    defined: dict[str, WorkflowType] = field(default_factory=dict)

    def apply(self, event: msgspec.Struct) -> None:
        match event:
            case WorkflowTypeDefined():
                self.defined[event.workflow_type.name] = event.workflow_type
            case _:
                raise TypeError(f"not a registry event: {type(event).__name__}")
        self.version += 1


def decide_define(
    state: RegistryState,
    cmd: DefineWorkflowType,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """Defining a type again replaces it (workflows already started keep their copy)."""
    return [WorkflowTypeDefined(workflow_type=cmd.workflow_type, defined_by=actor)]
