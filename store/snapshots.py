"""The snapshot store: eventsourcing's own ``Snapshot`` events in its own kind of table.

A second aggregate recorder (``stored_snapshots``, as eventsourcing's factory names it)
on the event store's datastore, SQLite or PostgreSQL, so snapshots share the events'
connection pool but never their table: the notification log, the relay and the audit see
none of them. A snapshot is a cache of a fold: deleting the table loses nothing.

Snapshots are encoded with msgpack (msgspec): the aggregates' states are plain
dataclasses with sets, datetimes and msgspec structs that the library's JSON transcoder
would need a transcoding for each.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from chorus.store.datastore import aggregate_recorder
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    EventStore,
    Mapper,
    Transcoder,
)

TABLE = "stored_snapshots"


class MsgpackTranscoder(Transcoder):
    """Builtins, sets, datetimes, UUIDs, dataclasses and structs, in and out as builtins."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder()

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data)


def snapshot_recorder(recorder: ApplicationRecorder) -> AggregateRecorder:
    """The snapshots table beside the events of ``recorder`` (created if missing)."""
    return aggregate_recorder(recorder, TABLE)


def snapshot_store(recorder: ApplicationRecorder) -> EventStore[UUID]:
    return EventStore(Mapper(MsgpackTranscoder()), snapshot_recorder(recorder))
