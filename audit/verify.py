"""Checking the whole store: every row against its own hash, its aggregate's chain, its seal.

Walks the log and the seal ledger side by side in position order, so memory stays
bounded by the number of aggregates (one last hash each), not the number of events.
What each check catches:

- an edited row: its recomputed hash differs from the stored one (or it no longer decodes,
  its topic no longer names its type, or its originator id is re-spelled);
- a deleted, inserted or reordered row: the aggregate's versions or ``prev_hash`` links
  break, and the row no longer matches the seal at its position (a seal without a row is
  a deletion, a sealed-range row without a seal an insertion);
- a row moved out of the log's range (position 0 or below): every row is read, with no
  lower bound, and the number read is compared with the table's row count;
- rewritten seals: the running hash no longer follows from the seals before it;
- a dropped, emptied or stalled ledger: rows left unsealed longer than the grace period
  (the engine seals within a second);
- the last events removed together with their seals: only an anchor outside the store
  shows it (``expected`` checkpoints, see ``chorus.audit.ledger``).

The walk is bounded by the log's head as read before it starts, so an engine writing and
sealing meanwhile never looks like a deletion.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from chorus.audit.ledger import (
    Checkpoint,
    Seal,
    last_seal,
    next_running_hash,
    row_hash,
    select_seals,
)
from chorus.events.codec import GENESIS_HASH, recompute_hash, stored_body
from chorus.store.datastore import Dialect
from chorus.store.recorder import RawRow, count_rows, select_raw_rows
from eventsourcing.persistence import ApplicationRecorder
from msgspec import Struct

MAX_PROBLEMS = 50
#: Seconds a row may stay unsealed before verify calls the ledger broken.
MAX_UNSEALED_AGE = 60.0


class Break(Struct, kw_only=True, frozen=True):
    """One break in the record, located as precisely as the evidence allows."""

    position: int
    aggregate: str | None
    aggregate_id: str | None
    version: int | None
    # edited | deleted | inserted | broken_chain | seal_mismatch | undecodable | bad_key |
    # bad_position | row_count | seals_missing | unsealed_too_old | anchor_mismatch
    kind: str
    message: str


class Report(Struct, kw_only=True, frozen=True):
    ok: bool
    events: int
    sealed_through: int
    unsealed: int
    head_running_hash: str | None
    problems: list[Break]
    #: Checkpoints (``POS:HASH``) the store was checked against, and matched unless a
    #: problem of kind ``anchor_mismatch`` says otherwise.
    anchors: list[str] = []

    @property
    def first(self) -> Break | None:
        return self.problems[0] if self.problems else None


def _rows(recorder: ApplicationRecorder, head: int, chunk: int) -> Iterator[RawRow]:
    after: int | None = None  # no lower bound: rows at position 0 or below are read too
    while batch := select_raw_rows(recorder, gt=after, lte=head, limit=chunk):
        yield from batch
        after = batch[-1].position


def _seals(recorder: ApplicationRecorder, head: int, chunk: int) -> Iterator[Seal]:
    after = 0
    while batch := select_seals(recorder, gt=after, lte=head, limit=chunk):
        yield from batch
        after = batch[-1].position


def _where(row: RawRow) -> dict[str, Any]:
    return {"aggregate": row.topic.split(".", 1)[0], "aggregate_id": _uuid_text(row.key),
            "version": row.version}  # fmt: skip


def _uuid_text(key: str) -> str:
    try:
        return str(UUID(key))
    except ValueError:
        return key


class _Walk:
    """State of one verification pass."""

    def __init__(
        self,
        sealed_through: int,
        sqlite: bool,
        expected: Sequence[Checkpoint],
        stale_before: datetime,
    ) -> None:
        self.sealed_through = sealed_through
        self.sqlite = sqlite
        # Every checkpoint given is checked: several may name one position (an operator's
        # ``--expect-seal`` and the anchor file), and none may shadow another.
        self.expected: dict[int, list[Checkpoint]] = {}
        for checkpoint in expected:
            self.expected.setdefault(checkpoint.position, []).append(checkpoint)
        self.stale_before = stale_before
        self.running = GENESIS_HASH
        self.chains: dict[str, tuple[int, str]] = {}  # aggregate id -> (version, hash)
        self.problems: list[Break] = []
        self.events = 0
        self.unsealed = 0
        self.seals = 0
        self.stale_reported = False

    def report(self, position: int, kind: str, message: str, **where: Any) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(
                Break(
                    position=position,
                    aggregate=where.get("aggregate"),
                    aggregate_id=where.get("aggregate_id"),
                    version=where.get("version"),
                    kind=kind,
                    message=message,
                )
            )

    def row(self, n: RawRow) -> None:
        self.events += 1
        aggregate = n.topic.split(".", 1)[0]
        where = _where(n)
        if n.position < 1:
            self.report(
                n.position, "bad_position",
                "a row below position 1 is outside the log (moved or inserted there)",
                **where,
            )  # fmt: skip
        if not n.key_in_recorder_form(self.sqlite):
            self.report(
                n.position, "bad_key",
                f"originator_id {n.key!r} is not spelled as the recorder writes it "
                "(re-spelled: reads of the aggregate no longer find this row)",
                **where,
            )  # fmt: skip
        try:
            notification = n.notification()
            body = stored_body(notification)
            recomputed = recompute_hash(notification)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
            self.report(
                n.position, "undecodable", f"the stored row does not decode: {error}", **where
            )
            return
        if recomputed != body.hash:
            self.report(n.position, "edited", "the row's content does not match its hash", **where)
        if n.topic != f"{aggregate}.{body.type}":
            self.report(
                n.position, "edited",
                f"the topic {n.topic!r} does not name the event's type {body.type!r}",
                **where,
            )  # fmt: skip
        if n.position > self.sealed_through:
            self._check_age(n, body.occurred_at, where)
        if aggregate == "command":  # dedup records: one event each, not chained
            if n.version != 1 or body.prev_hash != "":
                self.report(n.position, "broken_chain", "a dedup record must stand alone", **where)
            return
        key = str(notification.originator_id)
        version, last_hash = self.chains.get(key, (0, GENESIS_HASH))
        if n.version != version + 1:
            self.report(
                n.position, "broken_chain",
                f"version {n.version} follows version {version} of this aggregate "
                "(events missing, inserted or reordered)",
                **where,
            )  # fmt: skip
        elif body.prev_hash != last_hash:
            self.report(
                n.position, "broken_chain",
                "prev_hash is not the hash of the aggregate's previous event",
                **where,
            )  # fmt: skip
        self.chains[key] = (n.version, body.hash)

    def _check_age(self, n: RawRow, occurred_at: datetime, where: dict[str, Any]) -> None:
        """The oldest unsealed row older than the grace period breaks the record."""
        if self.stale_reported or occurred_at >= self.stale_before:
            return
        self.stale_reported = True
        if self.sealed_through == 0:
            self.report(
                n.position, "seals_missing",
                f"the seal ledger is missing or empty, and rows from {occurred_at.isoformat()} "
                "are older than the grace period (ledger dropped or emptied?)",
                **where,
            )  # fmt: skip
        else:
            self.report(
                n.position, "unsealed_too_old",
                f"the row (from {occurred_at.isoformat()}) is still unsealed after the grace "
                "period: the sealer stopped (see its log) or seals were removed",
                **where,
            )  # fmt: skip

    def sealed(self, n: RawRow | None, seal: Seal | None, position: int) -> None:
        if seal is None:
            assert n is not None
            if 0 < position <= self.sealed_through:
                self.report(
                    position, "inserted", "a row inside the sealed range has no seal", **_where(n)
                )
            else:
                self.unsealed += 1
            return
        self.seals += 1
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
        for anchor in self.expected.pop(position, []):
            if anchor.running_hash != seal.running_hash:
                self.report(
                    position, "anchor_mismatch",
                    f"the seal at {position} is not the anchored {anchor} (the log up to "
                    "here was rewritten and re-sealed)",
                    **where,
                )  # fmt: skip

    def unmatched_anchors(self, head: int) -> None:
        for anchor in (a for group in self.expected.values() for a in group):
            if anchor.position > head:
                message = (
                    f"the log ends at position {head}, before the anchored {anchor}: "
                    "events were removed from its end"
                )
            else:
                message = f"there is no seal at the anchored {anchor}: seals were removed"
            self.report(
                anchor.position, "anchor_mismatch", message,
                aggregate=None, aggregate_id=None, version=None,
            )  # fmt: skip


def verify_store(
    recorder: ApplicationRecorder,
    chunk: int = 1000,
    *,
    expected: Sequence[Checkpoint] = (),
    max_unsealed_age: float = MAX_UNSEALED_AGE,
    now: datetime,
) -> Report:
    """Verify every row and seal; problems come in position order, the first is the earliest.

    ``expected`` are checkpoints from outside the store (an anchor file, an earlier
    verify's output, a bundle's ``log_seal``); read them *before* calling, so that none is
    newer than the head this pass reads. Rows unsealed for longer than
    ``max_unsealed_age`` seconds (by their ``occurred_at``, against ``now``) are a problem.
    ``now`` is required so that the grace period is always measured on the same clock that
    stamped the rows: a test store on a fixed clock checked against the wall clock is a time
    bomb.
    """
    head = recorder.max_notification_id() or 0  # first: the bound for rows and seals alike
    head_seal = last_seal(recorder, lte=head)
    d = Dialect(recorder)
    walk = _Walk(
        head_seal.position if head_seal else 0,
        d.sqlite,
        expected,
        now - timedelta(seconds=max_unsealed_age),
    )
    rows, seals = _rows(recorder, head, chunk), _seals(recorder, head, chunk)
    n, s = next(rows, None), next(seals, None)
    while n is not None or s is not None:
        position = min(x.position for x in (n, s) if x is not None)
        here_n = n if n is not None and n.position == position else None
        here_s = s if s is not None and s.position == position else None
        if here_n is not None:
            walk.row(here_n)
            n = next(rows, None)
        if here_s is not None:
            s = next(seals, None)
        walk.sealed(here_n, here_s, position)
    walk.unmatched_anchors(head)
    stored = count_rows(recorder, lte=head)
    if stored != walk.events:
        walk.report(
            head, "row_count",
            f"the store holds {stored} rows up to position {head}, the walk read {walk.events}",
            aggregate=None, aggregate_id=None, version=None,
        )  # fmt: skip
    walk.problems.sort(key=lambda p: p.position)
    return Report(
        ok=not walk.problems,
        events=walk.events,
        sealed_through=walk.sealed_through,
        unsealed=walk.unsealed,
        head_running_hash=head_seal.running_hash if head_seal else None,
        problems=walk.problems,
        anchors=[str(c) for c in expected],
    )
