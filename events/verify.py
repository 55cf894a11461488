"""Checking the whole store: every row against its own hash, its aggregate's chain, its seal.

Walks the log and the seal ledger side by side in position order, so memory stays
bounded by the number of aggregates (one last hash each), not the number of events.
What each check catches:

- an edited row: its recomputed hash differs from the stored one (or it no longer decodes);
- a deleted, inserted or reordered row: the aggregate's versions or ``prev_hash`` links
  break, and the row no longer matches the seal at its position (a seal without a row is
  a deletion, a sealed-range row without a seal an insertion);
- rewritten seals: the running hash no longer follows from the seals before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from eventsourcing.persistence import ApplicationRecorder, Notification
from msgspec import Struct

from events.codec import GENESIS_HASH, recompute_hash, stored_body
from events.ledger import Seal, last_seal, next_running_hash, row_hash, select_seals

MAX_PROBLEMS = 50


class Problem(Struct, kw_only=True, frozen=True):
    """One break in the record, located as precisely as the evidence allows."""

    position: int
    aggregate: str | None
    aggregate_id: str | None
    version: int | None
    kind: str  # edited | deleted | inserted | broken_chain | seal_mismatch | undecodable
    message: str


class Report(Struct, kw_only=True, frozen=True):
    ok: bool
    events: int
    sealed_through: int
    unsealed: int
    head_running_hash: str | None
    problems: list[Problem]

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def _rows(recorder: ApplicationRecorder, chunk: int) -> Iterator[Notification]:
    start = 1
    while batch := recorder.select_notifications(start, chunk):
        yield from batch
        start = batch[-1].id + 1


def _seals(recorder: ApplicationRecorder, chunk: int) -> Iterator[Seal]:
    after = 0
    while batch := select_seals(recorder, gt=after, limit=chunk):
        yield from batch
        after = batch[-1].position


class _Walk:
    """State of one verification pass."""

    def __init__(self, sealed_through: int) -> None:
        self.sealed_through = sealed_through
        self.running = GENESIS_HASH
        self.chains: dict[str, tuple[int, str]] = {}  # aggregate id -> (version, hash)
        self.problems: list[Problem] = []
        self.events = 0
        self.unsealed = 0

    def report(self, position: int, kind: str, message: str, **where: Any) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(
                Problem(
                    position=position,
                    aggregate=where.get("aggregate"),
                    aggregate_id=where.get("aggregate_id"),
                    version=where.get("version"),
                    kind=kind,
                    message=message,
                )
            )

    def row(self, n: Notification) -> None:
        self.events += 1
        aggregate = n.topic.split(".", 1)[0]
        where = {"aggregate": aggregate, "aggregate_id": str(n.originator_id),
                 "version": n.originator_version}  # fmt: skip
        try:
            body = stored_body(n)
            recomputed = recompute_hash(n)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
            self.report(n.id, "undecodable", f"the stored row does not decode: {error}", **where)
            return
        if recomputed != body.hash:
            self.report(n.id, "edited", "the row's content does not match its hash", **where)
        if aggregate == "command":  # dedup records: one event each, not chained
            if n.originator_version != 1 or body.prev_hash != "":
                self.report(n.id, "broken_chain", "a dedup record must stand alone", **where)
            return
        key = str(n.originator_id)
        version, last_hash = self.chains.get(key, (0, GENESIS_HASH))
        if n.originator_version != version + 1:
            self.report(
                n.id, "broken_chain",
                f"version {n.originator_version} follows version {version} of this aggregate "
                "(events missing, inserted or reordered)",
                **where,
            )  # fmt: skip
        elif body.prev_hash != last_hash:
            self.report(
                n.id, "broken_chain",
                "prev_hash is not the hash of the aggregate's previous event",
                **where,
            )  # fmt: skip
        self.chains[key] = (n.originator_version, body.hash)

    def sealed(self, n: Notification | None, seal: Seal | None, position: int) -> None:
        if seal is None:
            assert n is not None
            if position <= self.sealed_through:
                self.report(
                    position, "inserted", "a row inside the sealed range has no seal",
                    aggregate=n.topic.split(".", 1)[0], aggregate_id=str(n.originator_id),
                    version=n.originator_version,
                )  # fmt: skip
            else:
                self.unsealed += 1
            return
        where = {"aggregate_id": seal.aggregate_id, "version": seal.version}
        if n is None:
            self.report(
                position, "deleted",
                f"the sealed event (aggregate {seal.aggregate_id} version {seal.version}) "
                "is missing",
                **where,
            )  # fmt: skip
        elif row_hash(n) != seal.row_hash:
            where["aggregate"] = n.topic.split(".", 1)[0]
            self.report(
                position, "seal_mismatch",
                "the row differs from what was sealed at this position (edited or moved)",
                **where,
            )  # fmt: skip
        self.running = next_running_hash(self.running, seal.row_hash)
        if self.running != seal.running_hash:
            self.report(
                position, "seal_mismatch",
                "the running hash does not follow from the seals before it (seals rewritten)",
                **where,
            )  # fmt: skip
            self.running = seal.running_hash  # report each break once, not every seal after


def verify_store(recorder: ApplicationRecorder, chunk: int = 1000) -> Report:
    """Verify every row and seal; problems come in position order, the first is the earliest."""
    head_seal = last_seal(recorder)
    walk = _Walk(head_seal.position if head_seal else 0)
    rows, seals = _rows(recorder, chunk), _seals(recorder, chunk)
    n, s = next(rows, None), next(seals, None)
    while n is not None or s is not None:
        position = min(
            x.id if isinstance(x, Notification) else x.position for x in (n, s) if x is not None
        )
        here_n = n if n is not None and n.id == position else None
        here_s = s if s is not None and s.position == position else None
        if here_n is not None:
            walk.row(here_n)
            n = next(rows, None)
        if here_s is not None:
            s = next(seals, None)
        walk.sealed(here_n, here_s, position)
    walk.problems.sort(key=lambda p: p.position)
    return Report(
        ok=not walk.problems,
        events=walk.events,
        sealed_through=walk.sealed_through,
        unsealed=walk.unsealed,
        head_running_hash=head_seal.running_hash if head_seal else None,
        problems=walk.problems,
    )
