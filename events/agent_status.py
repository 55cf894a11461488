"""The agent-status rule, written once: what each agent event makes an agent, and when an
online agent shows as busy.

The Agent aggregate's fold, the participant watch, the dispatcher, the ``agents`` read
model and the agents feed all ask this module, so the statuses they show and act on
cannot drift apart. Pure: a function of the event (and, for ``busy``, of the open tasks).
"""

from __future__ import annotations

from typing import Final

from chorus.events.agent import AgentCameOnline, AgentRegistered, AgentRetired, AgentWentOffline
from msgspec import Struct

ONLINE: Final = "online"
BUSY: Final = "busy"
OFFLINE: Final = "offline"
RETIRED: Final = "retired"
#: Every status an agent can show, as the API lists them.
STATUSES: Final = (ONLINE, BUSY, OFFLINE, RETIRED)


def status_set_by(event: Struct) -> str | None:
    """The status ``event`` gives its agent; None for an event that leaves it as it was
    (capabilities, verdicts, lost leases, concurrency). Registering is a sign of life."""
    match event:
        case AgentRegistered() | AgentCameOnline():
            return ONLINE
        case AgentWentOffline():
            return OFFLINE
        case AgentRetired():
            return RETIRED
    return None


def status_after(event: Struct, status: str) -> str:
    """The fold: the agent's status after ``event``, from ``status`` before it."""
    return status_set_by(event) or status


def shown_status(status: str, open_tasks: int) -> str:
    """An online agent holding open tasks shows as ``busy``: derived, never recorded."""
    return BUSY if status == ONLINE and open_tasks > 0 else status


def shown_status_sql(status: str, holds_open_tasks: str) -> str:
    """``shown_status`` as an SQL expression, for read-model queries that filter or count by
    the shown status: ``status`` is the status column, ``holds_open_tasks`` a condition."""
    return f"CASE WHEN {status}='{ONLINE}' AND {holds_open_tasks} THEN '{BUSY}' ELSE {status} END"
