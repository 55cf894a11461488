"""The auditor's window on the event store: the global log, exports, verification.

Read-only, like ``chorus.projections.history``: the gateway and the CLI reach the store's audit
functions (``chorus.audit.bundle``, ``chorus.audit.verify``) through here, never the write side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from chorus.audit.bundle import SealRef, build_bundle, load_signing_key, public_key_text
from chorus.audit.ledger import Checkpoint, last_seal
from chorus.audit.verify import MAX_UNSEALED_AGE, Report, verify_store
from chorus.contracts.feed import EventRecord
from chorus.events.codec import decode_record, is_domain_topic
from chorus.store.recorder import select_aggregate_notifications
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import ApplicationRecorder, Notification
from msgspec import Struct

__all__ = ["AuditLog", "LogFilter", "LogPage", "Report"]

CHUNK = 1000
#: A page scans at most this many positions, so a filter matching nothing stays cheap;
#: the page's ``next_after`` says where to go on.
SCAN_BUDGET = 20_000


@dataclass(frozen=True)
class LogFilter:
    """Which events of the global log to return (all given conditions must hold)."""

    aggregate: str | None = None
    type: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def topic_matches(self, topic: str) -> bool:
        return is_domain_topic(topic) and (
            self.aggregate is None or topic.split(".", 1)[0] == self.aggregate
        )

    def matches(self, record: EventRecord) -> bool:
        return (
            (self.type is None or record.type == self.type)
            and (self.actor is None or record.actor == self.actor)
            and (self.since is None or record.occurred_at >= self.since)
            and (self.until is None or record.occurred_at < self.until)
        )


class LogPage(Struct, kw_only=True):
    """Events in position order. Pass ``next_after`` as ``after`` for the next page;
    ``more`` is false once the page reached the log's head (as it was when read)."""

    items: list[EventRecord]
    next_after: int
    more: bool


class AuditLog:
    """The read side of the audit record: paging, exports and verification of the store.

    ``clock`` measures the sealer's grace period in ``verify``; tests pass their own.
    """

    def __init__(
        self,
        recorder: ApplicationRecorder,
        signing_key_path: Path | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.recorder = recorder
        self.signing_key_path = signing_key_path
        self.clock = clock

    def _scan(self, after: int, stop: int) -> Iterator[Notification]:
        start = after + 1
        while start <= stop and (batch := self.recorder.select_notifications(start, CHUNK, stop)):
            yield from batch
            start = batch[-1].id + 1

    def page(self, after: int, limit: int, where: LogFilter) -> LogPage:
        head = self.recorder.max_notification_id() or 0
        stop = min(head, after + SCAN_BUDGET)
        items: list[EventRecord] = []
        scanned = after
        for n in self._scan(after, stop):
            scanned = n.id
            if where.topic_matches(n.topic):
                record = decode_record(n)
                if where.matches(record):
                    items.append(record)
                    if len(items) == limit:
                        break
        if len(items) < limit:
            scanned = max(stop, after)  # everything up to ``stop`` was looked at
        return LogPage(items=items, next_after=scanned, more=scanned < head)

    def stream(
        self, after: int, where: LogFilter, limit: int | None = None
    ) -> Iterator[list[EventRecord]]:
        """The log from ``after`` to its head (as it was when the stream began), in chunks."""
        head = self.recorder.max_notification_id() or 0
        sent = 0
        chunk: list[EventRecord] = []
        for n in self._scan(after, head):
            if where.topic_matches(n.topic):
                record = decode_record(n)
                if where.matches(record):
                    chunk.append(record)
                    sent += 1
                    if limit is not None and sent >= limit:
                        break
                    if len(chunk) >= CHUNK:
                        yield chunk
                        chunk = []
        if chunk:
            yield chunk

    # Export -------------------------------------------------------------------------------

    def signing_key(self) -> Ed25519PrivateKey:
        if self.signing_key_path is None:
            raise FileNotFoundError("no signing key is configured")
        return load_signing_key(self.signing_key_path)

    def public_key(self) -> str:
        return public_key_text(self.signing_key())

    def aggregate_notifications(self, aggregate: str, aggregate_id: UUID) -> list[Notification]:
        out: list[Notification] = []
        while batch := select_aggregate_notifications(
            self.recorder, aggregate_id, gt=out[-1].originator_version if out else 0, limit=CHUNK
        ):
            out.extend(batch)
        return [n for n in out if n.topic.split(".", 1)[0] == aggregate]

    def export(
        self,
        *,
        aggregate: str | None = None,
        aggregate_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> bytes:
        """A signed bundle of one aggregate's history, or of the events in [since, until)."""
        selection: dict[str, str] = {}
        if aggregate is not None and aggregate_id is not None:
            notifications = self.aggregate_notifications(aggregate, aggregate_id)
            selection = {aggregate: str(aggregate_id)}
        else:
            where = LogFilter(since=since, until=until)
            head = self.recorder.max_notification_id() or 0
            notifications = [
                n
                for n in self._scan(0, head)
                if where.topic_matches(n.topic) and where.matches(decode_record(n))
            ]
            selection = {k: v.isoformat() for k, v in (("since", since), ("until", until)) if v}
        seal = last_seal(self.recorder)
        return build_bundle(
            notifications,
            self.signing_key(),
            selection,
            SealRef(position=seal.position, running_hash=seal.running_hash) if seal else None,
        )

    def verify(
        self, expected: Sequence[Checkpoint] = (), max_unsealed_age: float = MAX_UNSEALED_AGE
    ) -> Report:
        """Verify the store (against ``expected`` checkpoints read before this call)."""
        return verify_store(
            self.recorder, expected=expected, max_unsealed_age=max_unsealed_age, now=self.clock()
        )
