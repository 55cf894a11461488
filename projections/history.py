"""Read-only access to the event store for history queries (the gateway's window on it)."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

from chorus.contracts.feed import EventRecord
from chorus.events.codec import decode_record, is_domain_topic
from chorus.store.recorder import open_recorder, select_aggregate_notifications
from eventsourcing.persistence import ApplicationRecorder, Notification


class History:
    """An aggregate's recorded events, oldest first, with positions."""

    def __init__(self, database_url: str, recorder: ApplicationRecorder | None = None) -> None:
        self.recorder = recorder or open_recorder(database_url)

    def aggregate_events(
        self,
        aggregate: str,
        aggregate_id: str,
        *,
        after_version: int = 0,
        after_position: int | None = None,
        limit: int = 1000,
    ) -> list[EventRecord]:
        """Oldest first; ``after_position`` (a global position) lets a live feed catch up
        from where it stopped without reading the aggregate's whole history."""
        try:
            key = UUID(aggregate_id)
        except ValueError:
            return []
        records = [
            decode_record(n)
            for n in select_aggregate_notifications(
                self.recorder, key, gt=after_version, limit=limit, after_position=after_position
            )
        ]
        return [r for r in records if r.aggregate == aggregate]

    def log_notifications(
        self, topics: list[str], *, stop: int | None = None, chunk: int = 1000
    ) -> Iterator[Notification]:
        """The global log's notifications of these topics, in position order, up to ``stop``
        (default: the head as it is now)."""
        end = self.head() if stop is None else stop
        start = 1
        while start <= end and (
            batch := self.recorder.select_notifications(start, chunk, stop=end, topics=topics)
        ):
            yield from batch
            start = batch[-1].id + 1

    def first_event_after(self, position: int, scan: int = 1000) -> EventRecord | None:
        """The first domain event after ``position`` (within ``scan`` notifications):
        the oldest one a follower of the log at ``position`` still owes its readers."""
        for n in self.recorder.select_notifications(position + 1, scan):
            if is_domain_topic(n.topic):
                return decode_record(n)
        return None

    def head(self) -> int:
        """The newest position in the store (for projection lag)."""
        return self.recorder.max_notification_id() or 0
