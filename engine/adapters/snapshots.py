"""Snapshots of long aggregates, so a cold load costs about the same however long they are.

An agent's aggregate grows with every verdict and liveness transition; folding it from its
first event on every cache miss would make a long-lived agent ever slower to load. Every
``interval`` events an aggregate gets a snapshot (eventsourcing's ``Snapshot`` event in its
snapshot store, store/snapshots.py) taken after the batch that reached it has committed,
so a snapshot only ever holds committed state. A cold load reads the latest snapshot and
folds only the events after it.

A snapshot's topic names the state class and a fingerprint of the code that folds it: a
snapshot taken by other code is passed over (that load folds from the first event), so an
upgrade that changes a fold cannot revive a state the new fold would not produce.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from uuid import UUID

import msgspec
from chorus.engine.handlers import AggregateState, Handler
from chorus.engine.policies.checkpoint import code_version
from chorus.events.codec import decode_record, typed_event
from chorus.store.snapshots import snapshot_store
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import ApplicationRecorder, IntegrityError
from eventsourcing.utils import get_topic

log = logging.getLogger(__name__)

#: Forget which versions were snapshotted beyond this many aggregates (the worst case
#: after forgetting is one snapshot taken early).
MAX_TRACKED = 100_000


class _Topic(msgspec.Struct):
    """A stored snapshot's fields as eventsourcing's mapper wrote them (``topic``,
    ``timestamp``, ``state``), read for its topic alone: the state is skipped unbuilt."""

    topic: str = ""


_topic = msgspec.msgpack.Decoder(_Topic)


class Snapshots:
    """Folds aggregates from their latest snapshot and takes snapshots after commits."""

    def __init__(self, recorder: ApplicationRecorder, interval: int = 100) -> None:
        self.recorder = recorder
        self.interval = interval
        self.store = snapshot_store(recorder) if interval > 0 else None
        self._at: dict[UUID, int] = {}  # aggregate -> version of its latest snapshot
        self._topics: dict[type, str] = {}
        self._decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {}
        self.taken = 0
        #: Events folded by cold loads (benches and tests count them).
        self.events_folded = 0

    def _topic(self, cls: type) -> str:
        topic = self._topics.get(cls)
        if topic is None:
            topic = f"{get_topic(cls)}@{code_version([cls.__module__, __name__])}"
            self._topics[cls] = topic
        return topic

    def fold(self, handler: Handler, aggregate_id: UUID) -> AggregateState:
        """The aggregate as stored: its latest usable snapshot plus the events after it."""
        state = self._latest(handler, aggregate_id)
        if state is None:
            state = handler.new_state(aggregate_id)
        self._remember_at(aggregate_id, state.version)
        for stored in self.recorder.select_events(aggregate_id, gt=state.version or None):
            record = decode_record(stored)
            state.apply(typed_event(record))
            state.last_hash = record.hash
            self.events_folded += 1
        return state

    def _decoder(self, cls: type) -> msgspec.msgpack.Decoder[Any]:
        """Decodes a stored snapshot straight into ``cls``'s state: one pass, where the
        mapper's decode into builtins then ``msgspec.convert`` took two, 80 ms for a
        session of 20,000 participants, holding the interpreter (and so the writer
        thread beside this fold) all along."""
        decoder = self._decoders.get(cls)
        if decoder is None:
            stored = msgspec.defstruct(f"Stored{cls.__name__}", [("state", cls)])
            decoder = msgspec.msgpack.Decoder(stored, strict=False)
            self._decoders[cls] = decoder
        return decoder

    def _latest(self, handler: Handler, aggregate_id: UUID) -> AggregateState | None:
        if self.store is None:
            return None
        found = self.store.recorder.select_events(aggregate_id, desc=True, limit=1)
        if not found:
            return None
        cls = type(handler.new_state(aggregate_id))
        try:
            if _topic.decode(found[0].state).topic != self._topic(cls):
                return None  # taken by other code
            state: AggregateState = self._decoder(cls).decode(found[0].state).state
        except msgspec.DecodeError as error:
            log.warning(
                "snapshot of %s unreadable, folding from the start: %s", aggregate_id, error
            )
            return None
        return state

    def committed(self, states: Iterable[AggregateState]) -> None:
        """After a commit: snapshot each aggregate ``interval`` events past its last one.
        Never raises: the batch is already recorded, a snapshot is only a shortcut."""
        if self.store is None:
            return
        for state in states:
            if state.version - self._at.get(state.id, 0) < self.interval:
                continue
            try:
                self._take(state)
            except IntegrityError:
                self._remember_at(state.id, state.version)  # another engine took it
            except Exception as error:
                log.warning("no snapshot of %s: %s", state.id, error)

    def _take(self, state: AggregateState) -> None:
        assert self.store is not None
        snapshot = Snapshot(
            originator_id=state.id,
            originator_version=state.version,
            timestamp=Snapshot.create_timestamp(),
            topic=self._topic(type(state)),
            state=dict(vars(state)),
        )
        self.store.put([snapshot])
        self.taken += 1
        self._remember_at(state.id, state.version)

    def _remember_at(self, aggregate_id: UUID, version: int) -> None:
        if len(self._at) >= MAX_TRACKED and aggregate_id not in self._at:
            self._at.clear()
        self._at[aggregate_id] = version
