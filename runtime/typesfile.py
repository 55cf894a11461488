"""The operator's workflow types file (TOML), read once by the composition root.

Reading files is the deployment's business, not the wire contract's: the contracts define
``WorkflowType`` and the registry; this module turns ``--workflow-types FILE`` into one,
and ``chorus.bootstrap`` hands the registry to the engine and the gateway.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
from chorus.contracts.workflow_types import WorkflowType, WorkflowTypeRegistry
from msgspec import Struct


class TypesFile(Struct, forbid_unknown_fields=True):
    workflow_types: list[WorkflowType]


def load_workflow_types(path: Path | None = None) -> WorkflowTypeRegistry:
    """Built-ins plus the ``[[workflow_types]]`` of ``path`` (a type of the same name
    replaces the built-in). Raises ValueError naming what is wrong in the file."""
    if path is None:
        return WorkflowTypeRegistry()
    try:
        raw = tomllib.loads(path.read_text())
        extra = msgspec.convert(raw, TypesFile)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError, OSError) as error:
        raise ValueError(f"workflow types file {path}: {error}") from error
    return WorkflowTypeRegistry().with_defined(extra.workflow_types)
