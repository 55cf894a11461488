"""The seal ledger: a running hash over the whole log, by position, kept in the event store.

Each event already chains to the previous event of *its aggregate* (``codec.chain_hash``),
which catches an edited event but not a deleted last event, a renumbered row or two
aggregates' rows swapped. The ledger closes that gap: one seal row per log position,
``running_hash(p) = sha256(running_hash(previous seal) || row_hash(p))``, where
``row_hash`` covers the raw stored row *and its position*. ``events.verify`` recomputes
both chains and names the first position where the store and its seals disagree.

Seals are written by a follower (``engine.sealer``), not in the command transaction:
the write path stays as fast as before and works the same with one engine or several,
on SQLite or PostgreSQL. The price is a short unsealed tail (events not yet sealed are
protected by their aggregate chain only); ``verify`` reports its length. Seals are
deterministic, so two sealers racing write identical rows and the loser's insert is a
no-op.
"""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Notification
from msgspec import Struct

from events.codec import GENESIS_HASH
from events.store import _Dialect

TABLE = "chorus_seals"


class Seal(Struct, kw_only=True, frozen=True):
    """What the log held at ``position`` when it was sealed."""

    position: int
    aggregate_id: str
    version: int
    row_hash: str
    running_hash: str


def row_hash(notification: Notification) -> str:
    """sha256 over the raw stored row and its position: any change to either shows."""
    digest = hashlib.sha256(
        f"{notification.id}\n{UUID(str(notification.originator_id))}\n"
        f"{notification.originator_version}\n{notification.topic}\n".encode()
    )
    digest.update(bytes(notification.state))
    return digest.hexdigest()


def next_running_hash(previous: str, row: str) -> str:
    return hashlib.sha256(f"{previous}{row}".encode()).hexdigest()


def _table(d: _Dialect) -> str:
    if d.sqlite:
        return TABLE
    schema = d.table.split(".", 1)[0]
    return f"{schema}.{TABLE}"


def ensure_ledger(recorder: ApplicationRecorder) -> None:
    """Create the seals table next to the events (idempotent)."""
    d = _Dialect(recorder)
    integer = "INTEGER" if d.sqlite else "BIGINT"
    with recorder.datastore.transaction(commit=True) as cursor:  # type: ignore[attr-defined]
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {_table(d)} (position {integer} PRIMARY KEY, "
            f"aggregate_id TEXT NOT NULL, version {integer} NOT NULL, "
            "row_hash TEXT NOT NULL, running_hash TEXT NOT NULL)"
        )


def _seal_of(row: Any) -> Seal:
    return Seal(
        position=int(row["position"]),
        aggregate_id=str(row["aggregate_id"]),
        version=int(row["version"]),
        row_hash=str(row["row_hash"]),
        running_hash=str(row["running_hash"]),
    )


def _last_seal(cursor: Any, d: _Dialect) -> Seal | None:
    cursor.execute(f"SELECT * FROM {_table(d)} ORDER BY position DESC LIMIT 1")
    row = cursor.fetchone()
    return _seal_of(row) if row else None


def _exists(cursor: Any, d: _Dialect) -> bool:
    """False for a store written before seals existed (nothing sealed yet)."""
    if d.sqlite:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", [TABLE])
        return cursor.fetchone() is not None
    cursor.execute("SELECT to_regclass(%s) AS found", [_table(d)])
    return cursor.fetchone()["found"] is not None


def last_seal(recorder: ApplicationRecorder) -> Seal | None:
    """The newest seal, or None if nothing was sealed."""
    d = _Dialect(recorder)
    with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        return _last_seal(cursor, d) if _exists(cursor, d) else None


def select_seals(recorder: ApplicationRecorder, *, gt: int, limit: int) -> list[Seal]:
    """Seals after position ``gt``, in position order."""
    d = _Dialect(recorder)
    m = d.mark
    with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        if not _exists(cursor, d):
            return []
        cursor.execute(
            f"SELECT * FROM {_table(d)} WHERE position>{m} ORDER BY position LIMIT {m}",
            [gt, limit],
        )
        rows = cursor.fetchall()
    return [_seal_of(r) for r in rows]


def seal_step(recorder: ApplicationRecorder, limit: int = 1000) -> int:
    """Seal the next ``limit`` unsealed events in one transaction; returns how many."""
    d = _Dialect(recorder)
    m = d.mark
    with recorder.datastore.transaction(commit=True) as cursor:  # type: ignore[attr-defined]
        last = _last_seal(cursor, d)
        after = last.position if last else 0
        running = last.running_hash if last else GENESIS_HASH
        cursor.execute(
            f"SELECT {d.columns()} FROM {d.table} WHERE {d.position}>{m} "
            f"ORDER BY {d.position} LIMIT {m}",
            [after, limit],
        )
        rows = cursor.fetchall()
        seals = []
        for row in rows:
            notification = Notification(
                id=int(row["position"]),
                originator_id=UUID(str(row["originator_id"])),
                originator_version=int(row["originator_version"]),
                topic=str(row["topic"]),
                state=bytes(row["state"]),
            )
            digest = row_hash(notification)
            running = next_running_hash(running, digest)
            seals.append(
                (
                    notification.id,
                    str(notification.originator_id),
                    notification.originator_version,
                    digest,
                    running,
                )
            )
        if seals:
            cursor.executemany(
                f"INSERT INTO {_table(d)} (position, aggregate_id, version, row_hash, "
                f"running_hash) VALUES ({m}, {m}, {m}, {m}, {m}) "
                "ON CONFLICT (position) DO NOTHING",
                seals,
            )
    return len(seals)


def seal_all(recorder: ApplicationRecorder, batch: int = 1000) -> int:
    """Seal up to the head; returns how many events were sealed."""
    ensure_ledger(recorder)
    total = 0
    while moved := seal_step(recorder, batch):
        total += moved
    return total
