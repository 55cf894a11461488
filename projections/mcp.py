"""The ``mcp`` read model: registered MCP servers, their tool catalogues and call counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from chorus.contracts.feed import EventRecord
from chorus.events.mcp import (
    McpServerConfigured,
    McpServerHealthChanged,
    McpServerRegistered,
    McpServerRemoved,
    ToolCalled,
    ToolsDiscovered,
)
from chorus.projections.readstore import NOT_CREATED, Connection, upsert

NAME = "mcp"

DDL = [
    """CREATE TABLE IF NOT EXISTS mcp_servers (
        name TEXT PRIMARY KEY,
        aggregate_id TEXT NOT NULL UNIQUE,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL,            -- active | removed
        transport TEXT NOT NULL,
        owner TEXT NOT NULL,
        access TEXT NOT NULL,
        config TEXT NOT NULL,
        catalogue_digest TEXT,
        calls INTEGER NOT NULL,
        failed_calls INTEGER NOT NULL,
        last_call_at TEXT,
        version INTEGER NOT NULL,
        registered_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS mcp_tools (
        server TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        input_schema TEXT NOT NULL,
        schema_digest TEXT NOT NULL,
        PRIMARY KEY (server, name)
    )""",
    """CREATE TABLE IF NOT EXISTS mcp_health (
        server TEXT PRIMARY KEY,
        status TEXT NOT NULL,            -- healthy | unhealthy, as last recorded
        error TEXT,
        since TEXT NOT NULL
    )""",
]
TABLES = ["mcp_servers", "mcp_tools", "mcp_health"]

_json = msgspec.json.Encoder(order="sorted")
_REGISTER = upsert(
    "mcp_servers",
    ("name", "aggregate_id", "seq", "status", "transport", "owner", "access", "config",
     "catalogue_digest", "calls", "failed_calls", "last_call_at", "version", "registered_at",
     "updated_at"),
    ("name",),
)  # fmt: skip
_HEALTH = upsert("mcp_health", ("server", "status", "error", "since"), ("server",))
_decode = msgspec.json.Decoder()


def _ts(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class ToolView(msgspec.Struct, kw_only=True):
    server: str
    name: str
    description: str
    input_schema: dict[str, Any]
    schema_digest: str


class McpServerView(msgspec.Struct, kw_only=True):
    name: str
    status: str
    transport: dict[str, Any]
    owner: str
    access: dict[str, Any]
    config: dict[str, Any]
    catalogue_digest: str | None
    tools: list[ToolView]
    calls: int
    failed_calls: int
    last_call_at: str | None
    version: int
    registered_at: str
    updated_at: str
    #: The last recorded health check: healthy | unhealthy (None: never checked), since
    #: when, and why unhealthy.
    health: str | None = None
    health_since: str | None = None
    health_error: str | None = None


class McpServersProjection:
    """Folds ``mcp_server`` events into rows (inside the runner's transaction)."""

    name = NAME
    aggregates = frozenset({"mcp_server"})
    ddl = DDL
    tables = TABLES

    def apply(self, conn: Connection, record: EventRecord) -> None:
        event = record.event
        at = _ts(record.occurred_at)
        if isinstance(event, McpServerRegistered):
            server = event.name
            conn.execute("DELETE FROM mcp_tools WHERE server=?", (server,))
            conn.execute("DELETE FROM mcp_health WHERE server=?", (server,))
            conn.execute(
                _REGISTER,
                (server, record.aggregate_id, record.position, "active", _json.encode(event.transport).decode(),
                 event.owner, _json.encode(event.access).decode(), _json.encode(event.config).decode(),
                 None, 0, 0, None, record.version, at, at),
            )  # fmt: skip
            return
        name = self._name_of(conn, record)
        if name is None:
            return
        sets: dict[str, Any] = {"version": record.version, "updated_at": at}
        match event:
            case McpServerConfigured():
                changed = {"transport": event.transport, "access": event.access,
                           "config": event.config}  # fmt: skip
                for key, value in changed.items():
                    if value is not None:
                        sets[key] = _json.encode(value).decode()
                if event.owner:
                    sets["owner"] = event.owner
            case McpServerRemoved():
                sets["status"] = "removed"
            case ToolsDiscovered():
                conn.execute("DELETE FROM mcp_tools WHERE server=?", (name,))
                conn.executemany(
                    "INSERT INTO mcp_tools VALUES (?, ?, ?, ?, ?)",
                    [(name, t.name, t.description, _json.encode(t.input_schema).decode(),
                      t.schema_digest) for t in event.tools],
                )  # fmt: skip
                sets["catalogue_digest"] = event.catalogue_digest
            case McpServerHealthChanged():
                conn.execute(_HEALTH, (name, event.status, event.error, at))
            case ToolCalled():
                conn.execute(
                    "UPDATE mcp_servers SET calls = calls + 1, failed_calls = failed_calls + ? "
                    "WHERE name=?", (0 if event.outcome == "ok" else 1, name),
                )  # fmt: skip
                sets["last_call_at"] = at
        assignments = ", ".join(f"{column}=?" for column in sets)
        conn.execute(f"UPDATE mcp_servers SET {assignments} WHERE name=?", (*sets.values(), name))

    def _name_of(self, conn: Connection, record: EventRecord) -> str | None:
        """Events after registration do not repeat the name: find it by aggregate id."""
        row = conn.execute(
            "SELECT name FROM mcp_servers WHERE aggregate_id=?", (record.aggregate_id,)
        ).fetchone()
        return row[0] if row else None


def _tools(conn: Connection, server: str | None = None) -> list[ToolView]:
    query = "SELECT * FROM mcp_tools" + (" WHERE server=?" if server else "")
    rows = conn.execute(query + " ORDER BY server, name", (server,) if server else ()).fetchall()
    return [ToolView(server=r[0], name=r[1], description=r[2], input_schema=_decode.decode(r[3]),
                     schema_digest=r[4]) for r in rows]  # fmt: skip


def _view(conn: Connection, row: Any) -> McpServerView:
    try:
        health = conn.execute(
            "SELECT status, since, error FROM mcp_health WHERE server=?", (row[0],)
        ).fetchone()
    except NOT_CREATED:  # a read store from before health was recorded
        health = None
    return McpServerView(
        name=row[0], status=row[3], transport=_decode.decode(row[4]), owner=row[5],
        access=_decode.decode(row[6]), config=_decode.decode(row[7]), catalogue_digest=row[8],
        calls=row[9], failed_calls=row[10], last_call_at=row[11], version=row[12],
        registered_at=row[13], updated_at=row[14], tools=_tools(conn, row[0]),
        health=health[0] if health else None, health_since=health[1] if health else None,
        health_error=health[2] if health else None,
    )  # fmt: skip


def get_server(conn: Connection, name: str) -> McpServerView | None:
    """An active server (a removed one reads as absent)."""
    try:
        row = conn.execute(
            "SELECT * FROM mcp_servers WHERE name=? AND status='active'", (name,)
        ).fetchone()
    except NOT_CREATED:  # no such table yet: nothing was ever registered
        return None
    return _view(conn, row) if row else None


def list_servers(conn: Connection) -> list[McpServerView]:
    try:
        rows = conn.execute(
            "SELECT * FROM mcp_servers WHERE status='active' ORDER BY name"
        ).fetchall()
    except NOT_CREATED:
        return []
    return [_view(conn, row) for row in rows]


def list_tools(conn: Connection, server: str | None = None) -> list[ToolView]:
    """Tools of active servers."""
    try:
        return [t for t in _tools(conn, server) if get_server(conn, t.server) is not None]
    except NOT_CREATED:
        return []
