"""The ``agents`` read model's tables, and how it spells times (fixed-width UTC text, so
that comparing them as text compares them as times)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

_encode = msgspec.json.encode

NAME = "agents"

DDL = [
    """CREATE TABLE IF NOT EXISTS agents (
        seq INTEGER PRIMARY KEY,          -- log position of AgentRegistered
        uuid TEXT NOT NULL UNIQUE,        -- the agent aggregate's id
        agent_id TEXT NOT NULL UNIQUE,    -- the name
        type TEXT NOT NULL,
        capabilities TEXT NOT NULL,       -- JSON list, sorted
        metadata TEXT NOT NULL,
        owner TEXT NOT NULL,
        status TEXT NOT NULL,             -- online | offline | retired (busy is derived)
        registered_at TEXT NOT NULL,
        last_seen TEXT,
        last_activity TEXT NOT NULL,
        verified INTEGER NOT NULL,
        rejected INTEGER NOT NULL,
        score REAL NOT NULL,              -- events.reliability.reliability_score, all time
        retired_reason TEXT,
        version INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS agents_score ON agents (score DESC, agent_id)",
    """CREATE TABLE IF NOT EXISTS agent_capabilities (
        capability TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        PRIMARY KEY (capability, agent_id)
    )""",
    """CREATE TABLE IF NOT EXISTS agent_assignments (
        agent_id TEXT NOT NULL,
        task_id TEXT NOT NULL,            -- a session id, or <workflow_id>/<phase>
        kind TEXT NOT NULL,               -- session | phase
        assigned_at TEXT NOT NULL,
        closed_at TEXT,
        PRIMARY KEY (agent_id, task_id)
    )""",
    "CREATE INDEX IF NOT EXISTS agent_assignments_task ON agent_assignments (task_id)",
    """CREATE TABLE IF NOT EXISTS agent_verdicts (
        position INTEGER PRIMARY KEY,     -- log position of the verdict event
        agent_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        at TEXT NOT NULL,                 -- when the verdict was recorded
        verified INTEGER NOT NULL,
        task_kind TEXT,
        completion_time TEXT NOT NULL,
        output_hash TEXT NOT NULL,
        assigned_at TEXT,
        response_time REAL,
        quality_score REAL NOT NULL,
        score_parts TEXT NOT NULL,
        reasons TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS agent_verdicts_agent ON agent_verdicts (agent_id, at)",
    # Verdicts recorded with counts=false (events.reliability): shown, but in no metric.
    """CREATE TABLE IF NOT EXISTS agent_verdicts_uncounted (
        position INTEGER PRIMARY KEY      -- the verdict's log position
    )""",
    """CREATE TABLE IF NOT EXISTS agent_activity (
        agent_id TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (agent_id, at)
    ) WITHOUT ROWID""",
]
TABLES = ["agents", "agent_capabilities", "agent_assignments", "agent_verdicts",
          "agent_verdicts_uncounted", "agent_activity"]  # fmt: skip

#: The engine's own actor: a delegated phase is "assigned" to it, which is no agent's task.
SYSTEM = "system"


def stamp(value: datetime | str) -> str:
    """A time as stored here: fixed-width UTC, so text order is time order. msgspec writes
    it (``strftime`` was 5% of a rebuild); it leaves out a zero fraction, put back here."""
    if isinstance(value, str):
        value = parse_time(value)
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    text = _encode(value)[1:-1].decode()
    return text if len(text) == 27 else f"{text[:-1]}.000000Z"


def parse_time(value: str) -> datetime:
    """RFC 3339 (``Z`` or an offset); a time without a zone is taken as UTC."""
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
