"""The ``sessions`` read model: one row per session, one per participant, and its queries."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec
from chorus.contracts.feed import EventRecord
from chorus.events.session import (
    ParticipantLost,
    ParticipantReplaced,
    ResultSubmitted,
    SessionCancelled,
    SessionFinalised,
    SessionOpened,
    SessionTimedOut,
)
from chorus.projections.pending import Pending, continued, fold
from chorus.projections.readstore import NOT_CREATED, Connection, Row
from chorus.projections.tables import RowDict, Table

NAME = "sessions"

DDL = [
    """CREATE TABLE IF NOT EXISTS sessions (
        seq INTEGER PRIMARY KEY,          -- log position of SessionOpened: list order, cursor
        id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        coordinator_id TEXT NOT NULL,
        opened_by TEXT NOT NULL,
        task TEXT NOT NULL,
        timeout_seconds INTEGER NOT NULL,
        deadline TEXT NOT NULL,
        outcome TEXT,
        participant_count INTEGER NOT NULL,
        submitted_count INTEGER NOT NULL,
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_status ON sessions (status, seq)",
    """CREATE TABLE IF NOT EXISTS session_participants (
        session_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        ord INTEGER NOT NULL,
        result TEXT,
        success INTEGER,
        output_hash TEXT,
        submitted_at TEXT,
        PRIMARY KEY (session_id, agent_id)
    )""",
    "CREATE INDEX IF NOT EXISTS session_participants_agent ON session_participants (agent_id)",
]
TABLES = ["sessions", "session_participants"]

_json = msgspec.json.Encoder(order="sorted")
_decode = msgspec.json.Decoder()


def _ts(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, the same spelling msgspec uses on the wire (msgspec
    itself writes it: a tenth of ``isoformat``'s cost, which showed in rebuild profiles)."""
    return _json.encode(value)[1:-1].decode()


SESSIONS = Table(
    "sessions",
    ("seq", "id", "status", "coordinator_id", "opened_by", "task", "timeout_seconds", "deadline",
     "outcome", "participant_count", "submitted_count", "version", "created_at", "updated_at"),
    key=("id",),
)  # fmt: skip
PARTICIPANTS = Table(
    "session_participants",
    ("session_id", "agent_id", "ord", "result", "success", "output_hash", "submitted_at"),
    key=("session_id", "agent_id"),
    group="session_id",
)


def participants_named(records: Sequence[EventRecord]) -> set[tuple[str, str]]:
    """(session id, agent id) of each participant a batch's session events change: who
    submitted a result, who was replaced and who replaced them. A batch's read models read
    these rows, not whole sessions (a result names one participant of ten). Sessions the
    batch opens are left out: the store has none of their rows yet (a rebuild's batch
    opens most of the sessions it names, and looking up their 20,000 absent rows was 8%
    of a rebuild, profiled)."""
    opened = {r.aggregate_id for r in records if r.type == "SessionOpened"}
    named: set[tuple[str, str]] = set()
    for r in records:
        if r.aggregate_id in opened:
            continue
        if isinstance(event := r.event, ResultSubmitted):
            named.add((r.aggregate_id, event.agent_id))
        elif isinstance(event, ParticipantReplaced):
            named.add((r.aggregate_id, event.replaced))
            named.add((r.aggregate_id, event.replacement))
    return named


class SessionsProjection:
    """Folds session events into rows. ``apply`` runs inside the runner's transaction; rows
    are changed in the batch's memory and written once at its end (``projections.pending``)."""

    name = NAME
    aggregates = frozenset({"session"})
    ddl = DDL
    tables = TABLES

    def apply(self, conn: Connection, record: EventRecord) -> None:
        fold(conn, self._apply, record)

    def prefetch(self, rows: Pending, records: Sequence[EventRecord]) -> None:
        """The sessions a batch changes, and the participants' rows its events name (a
        session's other participants are not read)."""
        rows.load(SESSIONS, continued(records, "SessionOpened"))
        rows.load_keys(PARTICIPANTS, participants_named(records))

    def _apply(self, rows: Pending, record: EventRecord) -> None:
        event = record.event
        sid = record.aggregate_id
        at = _ts(record.occurred_at)
        if isinstance(event, SessionOpened):
            rows.put(SESSIONS, {
                "seq": record.position, "id": sid, "status": "open",
                "coordinator_id": event.coordinator_id, "opened_by": event.opened_by,
                "task": _json.encode(event.task).decode(),
                "timeout_seconds": event.timeout_seconds, "deadline": _ts(event.deadline),
                "outcome": None, "participant_count": len(event.participants),
                "submitted_count": 0, "version": record.version, "created_at": at,
                "updated_at": at,
            })  # fmt: skip
            rows.created(PARTICIPANTS, sid)  # a session's first event
            for i, agent in enumerate(event.participants):
                rows.put(PARTICIPANTS, {
                    "session_id": sid, "agent_id": agent, "ord": i, "result": None,
                    "success": None, "output_hash": None, "submitted_at": None,
                })  # fmt: skip
            return
        session = rows.get(SESSIONS, sid)
        match event:
            case ResultSubmitted():
                participant = rows.get(PARTICIPANTS, sid, event.agent_id)
                if participant is not None:
                    rows.update(PARTICIPANTS, participant,
                                result=_json.encode(event.result).decode(),
                                success=int(event.success), output_hash=event.output_hash,
                                submitted_at=at)  # fmt: skip
                if session is not None:
                    rows.update(SESSIONS, session, submitted_count=session["submitted_count"] + 1,
                                version=record.version, updated_at=at)  # fmt: skip
            case ParticipantReplaced():
                # The replacement takes the lost participant's place (and its order).
                replaced = rows.get(PARTICIPANTS, sid, event.replaced)
                if replaced is not None:
                    rows.delete(PARTICIPANTS, sid, event.replaced)
                    rows.put(PARTICIPANTS, {**replaced, "agent_id": event.replacement})
                self._touch(rows, session, record)
            case ParticipantLost():
                self._touch(rows, session, record)  # what the policy did shows in the events
            case SessionFinalised():
                self._close(rows, session, record, event.outcome, {
                    "outcome": event.outcome, "reason": event.reason, "verdict": event.verdict,
                })  # fmt: skip
            case SessionTimedOut():
                self._close(rows, session, record, "timed_out", {
                    "outcome": "timed_out", "reason": "deadline passed", "pending": event.pending,
                })  # fmt: skip
            case SessionCancelled():
                self._close(rows, session, record, "cancelled", {
                    "outcome": "cancelled", "reason": event.reason,
                    "cancelled_by": event.cancelled_by,
                })  # fmt: skip

    @staticmethod
    def _touch(rows: Pending, session: RowDict | None, record: EventRecord) -> None:
        if session is not None:
            rows.update(SESSIONS, session, version=record.version,
                        updated_at=_ts(record.occurred_at))  # fmt: skip

    @staticmethod
    def _close(
        rows: Pending, session: RowDict | None, record: EventRecord, status: str,
        outcome: dict[str, Any],
    ) -> None:  # fmt: skip
        if session is not None:
            rows.update(SESSIONS, session, status=status, outcome=_json.encode(outcome).decode(),
                        version=record.version, updated_at=_ts(record.occurred_at))  # fmt: skip


# Queries ------------------------------------------------------------------------------------

SessionStatus = Literal["open", "succeeded", "failed", "timed_out", "cancelled"]


class ResultView(msgspec.Struct, kw_only=True):
    result: dict[str, Any]
    success: bool
    output_hash: str | None
    submitted_at: str


class SessionView(msgspec.Struct, kw_only=True):
    """A session as the gateway serves it."""

    session_id: str
    status: SessionStatus
    coordinator_id: str
    opened_by: str
    participants: list[str]
    task: dict[str, Any]
    timeout_seconds: int
    deadline: str
    results: dict[str, ResultView]
    pending: list[str]
    outcome: dict[str, Any] | None
    version: int
    created_at: str
    updated_at: str


class SessionPage(msgspec.Struct, kw_only=True):
    items: list[SessionView]
    next_cursor: str | None


def _view(conn: Connection, row: Row) -> SessionView:
    parts = conn.execute(
        "SELECT agent_id, result, success, output_hash, submitted_at FROM session_participants "
        "WHERE session_id=? ORDER BY ord",
        (row["id"],),
    ).fetchall()
    results = {
        p["agent_id"]: ResultView(
            result=_decode.decode(p["result"]),
            success=bool(p["success"]),
            output_hash=p["output_hash"],
            submitted_at=p["submitted_at"],
        )
        for p in parts
        if p["submitted_at"] is not None
    }
    return SessionView(
        session_id=row["id"],
        status=row["status"],
        coordinator_id=row["coordinator_id"],
        opened_by=row["opened_by"],
        participants=[p["agent_id"] for p in parts],
        task=_decode.decode(row["task"]),
        timeout_seconds=row["timeout_seconds"],
        deadline=row["deadline"],
        results=results,
        pending=[p["agent_id"] for p in parts if p["submitted_at"] is None],
        outcome=_decode.decode(row["outcome"]) if row["outcome"] else None,
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def get_session(conn: Connection, session_id: str) -> SessionView | None:
    try:
        row = conn.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
    except NOT_CREATED:
        return None
    return _view(conn, row) if row else None


def open_sessions_naming_others(conn: Connection, actor: str) -> int:
    """How many open sessions ``actor`` opened that name an agent other than itself."""
    try:
        row = conn.execute(
            "SELECT count(*) FROM sessions s WHERE s.opened_by=? AND s.status='open' AND EXISTS "
            "(SELECT 1 FROM session_participants p WHERE p.session_id=s.id AND p.agent_id<>?)",
            (actor, actor),
        ).fetchone()
    except NOT_CREATED:  # not created yet
        return 0
    return int(row[0])


# Who sees which results ----------------------------------------------------------------------

#: Roles that see every result of an open session.
SEES_ALL_RESULTS = frozenset({"operator", "admin", "auditor"})
#: What a feed shows of a result its viewer may not see yet.
HIDDEN_FIELDS = ("result", "output_hash", "result_digest")


def sees_all_results(view: SessionView, actor: str, role: str) -> bool:
    """Whether ``actor`` may see every participant's result now.

    While a session is open, a participant must not see what the others submitted (it
    could copy an answer, or its hash, and be counted as agreeing). So every result is
    shown to operators, admins and auditors, to the session's opener and coordinator when
    they are not participants themselves, and to everyone once the session closed; any
    other caller sees its own result only."""
    if view.status != "open" or role in SEES_ALL_RESULTS:
        return True
    return actor in (view.opened_by, view.coordinator_id) and actor not in view.participants


def visible_to(view: SessionView, actor: str, role: str) -> SessionView:
    """The view as ``actor`` may see it (see ``sees_all_results``)."""
    if sees_all_results(view, actor, role):
        return view
    mine = {agent: r for agent, r in view.results.items() if agent == actor}
    return msgspec.structs.replace(view, results=mine)


def hide_others_result(record: dict[str, Any], actor: str) -> dict[str, Any]:
    """A feed record as a viewer that may not see others' results gets it: another
    participant's ``ResultSubmitted`` without its result and hashes (``hidden: true``)."""
    data = record.get("data")
    if record.get("type") != "ResultSubmitted" or not isinstance(data, dict):
        return record
    if data.get("agent_id") == actor:
        return record
    kept = {k: v for k, v in data.items() if k not in HIDDEN_FIELDS}
    return {**record, "data": {**kept, "hidden": True}}


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Raises ValueError for a cursor we did not issue."""
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        text = base64.urlsafe_b64decode(padded.encode()).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("invalid cursor") from error
    if not text.startswith("s:") or not text[2:].isdigit() or len(text) > 22:
        raise ValueError("invalid cursor")
    seq = int(text[2:])
    if seq >= 2**63:  # beyond SQLite's INTEGER: we never issued it
        raise ValueError("invalid cursor")
    return seq


def list_sessions(
    conn: Connection,
    *,
    status: str | None = None,
    participant: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> SessionPage:
    """Newest first, keyset-paged by the opening position."""
    where: list[str] = []
    params: list[object] = []
    if status:
        where.append("s.status=?")
        params.append(status)
    if participant:
        where.append(
            "EXISTS (SELECT 1 FROM session_participants p WHERE p.session_id=s.id AND p.agent_id=?)"
        )
        params.append(participant)
    if cursor:
        where.append("s.seq<?")
        params.append(decode_cursor(cursor))
    sql = "SELECT s.* FROM sessions s"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY s.seq DESC LIMIT ?"
    params.append(limit + 1)
    try:
        rows = conn.execute(sql, params).fetchall()
    except NOT_CREATED:
        return SessionPage(items=[], next_cursor=None)
    more = len(rows) > limit
    rows = rows[:limit]
    return SessionPage(
        items=[_view(conn, r) for r in rows],
        next_cursor=encode_cursor(rows[-1]["seq"]) if more and rows else None,
    )
