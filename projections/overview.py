"""Fleet-wide counts from the read models: what the console's overview and ``/metrics`` show.

One small query per read model; a table that does not exist yet (no projector has run)
counts as empty.
"""

from __future__ import annotations

from typing import Any

from chorus.audit.ledger import last_seal
from chorus.events.agent_status import shown_status_sql
from chorus.projections.readstore import NOT_CREATED, Connection
from eventsourcing.persistence import ApplicationRecorder

#: Read model -> the query that counts its rows by (shown) status.
_COUNTS = {
    "sessions": "SELECT status, count(*) FROM sessions GROUP BY status",
    "workflows": "SELECT status, count(*) FROM workflows GROUP BY status",
    # ``busy`` is derived, as in the agents API: online with an open assignment.
    "agents": "SELECT "
    + shown_status_sql(
        "a.status",
        "EXISTS (SELECT 1 FROM agent_assignments t "
        "WHERE t.agent_id=a.agent_id AND t.closed_at IS NULL)",
    )
    + " AS shown, count(*) FROM agents a GROUP BY shown",
    # Work waiting for an agent: the dispatch queue's depth by priority.
    "queued": "SELECT priority, count(*) FROM workflows WHERE status='queued' GROUP BY priority",
}


def status_counts(conn: Connection) -> dict[str, dict[str, int]]:
    """``{"sessions": {"open": 3, ...}, "workflows": {...}, "agents": {"busy": 1, ...},
    "queued": {"high": 2, ...}}`` (queued workflows by priority)."""
    counts: dict[str, dict[str, int]] = {}
    for model, sql in _COUNTS.items():
        try:
            rows = conn.execute(sql).fetchall()
        except NOT_CREATED:
            rows = []
        counts[model] = {str(row[0]): int(row[1]) for row in rows}
    return counts


def seal_status(recorder: ApplicationRecorder, head: int) -> dict[str, Any]:
    """How far the seal ledger reaches: ``sealed_through`` and the ``unsealed`` rows after
    it (the engine seals right behind the writes, so a growing tail means it stalled)."""
    seal = last_seal(recorder)
    sealed = seal.position if seal is not None else 0
    return {
        "sealed_through": sealed,
        "running_hash": seal.running_hash if seal is not None else None,
        "unsealed": max(0, head - sealed),
    }
