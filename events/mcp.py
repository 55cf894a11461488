"""Events of the McpServer aggregate: registration, configuration, removal, the discovered
tool catalogue, and every tool call made through Chorus.

Transports carry only the names of the environment variables that hold secrets, so no
event ever holds a secret. A call's arguments and result are kept as digests, and in full
only when the server's configuration says so.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

from chorus.contracts.mcp import Access, ServerConfig, ToolSpec, Transport
from msgspec import Struct


class McpServerRegistered(Struct, kw_only=True, frozen=True):
    name: str
    transport: Transport
    owner: str
    access: Access
    config: ServerConfig
    registered_by: str
    registered_at: datetime


class McpServerConfigured(Struct, kw_only=True, frozen=True):
    """What changed (fields left None did not)."""

    transport: Transport | None = None
    owner: str | None = None
    access: Access | None = None
    config: ServerConfig | None = None
    configured_by: str


class McpServerRemoved(Struct, kw_only=True, frozen=True):
    reason: str
    removed_by: str


class ToolsDiscovered(Struct, kw_only=True, frozen=True):
    """The whole catalogue as discovered; ``catalogue_digest`` covers every tool's name and
    schema digest, so a changed tool shows in history."""

    tools: list[ToolSpec]
    catalogue_digest: str
    discovered_by: str


class ToolCalled(Struct, kw_only=True, frozen=True):
    tool: str
    caller: str
    schema_digest: str
    args_digest: str
    result_digest: str | None
    duration_ms: float
    outcome: str
    error: str | None = None
    task_id: str | None = None
    arguments: dict[str, Any] | None = None
    result: Any = None


class McpServerHealthChanged(Struct, kw_only=True, frozen=True):
    """A health check found the server ``healthy`` or ``unhealthy`` (and why), where the
    last one recorded said otherwise: the log holds transitions, not every check."""

    status: str
    error: str | None = None
    checked_by: str


#: Every event of the McpServer aggregate: a union tagged by the record's ``type`` (the class name).
McpServerEvent = (
    McpServerRegistered
    | McpServerConfigured
    | McpServerRemoved
    | ToolsDiscovered
    | ToolCalled
    | McpServerHealthChanged
)
MCP_EVENTS: dict[str, type[Struct]] = {cls.__name__: cls for cls in get_args(McpServerEvent)}
