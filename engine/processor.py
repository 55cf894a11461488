"""The command processor: decide, record in one transaction per batch, then answer.

Runs synchronously (the eventsourcing recorder has no async API), called from one worker
thread so batches are applied in arrival order. A batch's events and its dedup records
are written with one ``insert_events`` call: one transaction (group commit). Replies are
built only after that call returns, so nothing is ``accepted`` before it is durable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from uuid import UUID

import msgspec
from chorus.contracts import errors as codes
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.errors import ErrorInfo
from chorus.contracts.workflow_types import REGISTRY_ID, WorkflowType
from chorus.engine.adapters import metrics
from chorus.engine.adapters.snapshots import Snapshots
from chorus.engine.domain.authz import RULES, authorize
from chorus.engine.domain.context import EngineContext
from chorus.engine.domain.errors import DomainError
from chorus.engine.domain.partitions import partition_of
from chorus.engine.handlers import HANDLERS, AggregateState, Handler
from chorus.engine.policies.directory import AgentDirectory
from chorus.engine.policies.quota import OpenSessionsByOpener
from chorus.events.codec import EventMeta, decode_record, encode_event, typed_event
from chorus.events.commands import CommandAccepted, command_record_id
from chorus.store.recorder import select_first_events
from eventsourcing.persistence import ApplicationRecorder, IntegrityError, StoredEvent

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Command:
    """A command that passed edge validation: typed, with the actor from the subject."""

    actor: str
    handler: Handler
    envelope: Envelope[Any]

    @property
    def command_id(self) -> str:
        return self.envelope.command_id

    @cached_property
    def target(self) -> UUID:
        """The aggregate it acts on: asked by the partition routing, the prefetcher and the
        processor (several times a batch), so worked out once (may raise ``ValueError``)."""
        return self.handler.target(self.envelope.payload)

    @cached_property
    def record_id(self) -> UUID:
        """Its dedup record's id (``command_record_id``), looked up and then written."""
        return command_record_id(self.actor, self.envelope.command_id)

    @cached_property
    def fingerprint(self) -> str:
        """What the command asks for, so a reused command id can be told from a retry."""
        digest = hashlib.sha256(f"{self.handler.aggregate}.{self.handler.command}:".encode())
        digest.update(_canonical.encode(self.envelope.payload))
        return digest.hexdigest()


_canonical = msgspec.json.Encoder(order="sorted")


class _Staged:
    """What one command will write if the batch commits."""

    __slots__ = ("command", "events", "reply_index")

    def __init__(self, command: Command, events: list[StoredEvent], reply_index: int) -> None:
        self.command = command
        self.events = events
        self.reply_index = reply_index


class Processor:
    """Turns batches of commands into recorded events and replies."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        clock: Clock = utc_now,
        cache_size: int = 10_000,
        context: EngineContext | None = None,
        snapshot_interval: int = 100,
    ) -> None:
        self.recorder = recorder
        #: Cold loads start from the latest snapshot (engine/adapters/snapshots.py).
        self.snapshots = Snapshots(recorder, snapshot_interval)
        self.clock = clock
        self.directory = AgentDirectory(recorder)
        self.open_sessions = OpenSessionsByOpener(recorder)
        # Decisions see the store through this processor: types defined over the API,
        # other aggregates (within the batch's view) and the registered agents.
        self.context = dataclasses.replace(
            context or EngineContext(),
            defined_types=self._defined_types,
            load=self._lookup,
            agents=lambda: self.directory.catch_up().values(),
            sessions_held=self.open_sessions.held_by,
        )
        self.cache_size = cache_size
        self._cache: OrderedDict[UUID, AggregateState] = OrderedDict()
        self._working: dict[UUID, AggregateState] | None = None
        #: The defined workflow types as the running batch read them (one read per batch).
        self._registry_memo: list[WorkflowType] | None = None
        #: Commits refused on a version check (also ``chorus_engine_version_conflicts_total``):
        #: another writer wrote an aggregate of the batch first. Partitioned engines keep it
        #: at zero; a bench reads it.
        self.conflicts = 0
        #: Every cached state reflects the log's events up to this notification id
        #: (``_sync``); None: not known, so the first sync forgets the cache. Read now,
        #: while the cache is empty: a first sync that forgot a full cache refolded every
        #: aggregate in flight (the first completion claim of a burst did).
        self._head: int | None = None
        with contextlib.suppress(Exception):  # the store is down: the first sync learns it
            self._head = recorder.max_notification_id() or 0
        self._synced = False  # the running batch's reads see the log up to ``_head``
        #: Told each committed batch's rows and their log positions, in the writer thread
        #: (the engine's ``LogTail``: its followers then need no query for them).
        self.on_commit: Callable[[Sequence[StoredEvent], Sequence[int]], None] | None = None

    # Aggregates -----------------------------------------------------------------------------

    def load(
        self,
        handler: Handler,
        aggregate_id: UUID,
        working: dict[UUID, AggregateState] | None = None,
    ) -> AggregateState:
        """The aggregate as this batch sees it: staged in the batch, else cached, else folded.

        ``working`` holds every aggregate the batch touched, with its staged events applied;
        it enters the cache only once the batch has committed (``remember``), so the cache
        holds committed states only, and an aggregate that does not exist yet is never
        cached (another worker may create it). This engine assumes it is the usual writer
        of what it caches; if another worker wrote meanwhile, the save fails on the version
        check and the command is retried on a fresh fold.

        Without ``working`` (outside a batch) the loaded state is cached at once.
        """
        if working is None:
            alone: dict[UUID, AggregateState] = {}
            loaded = self.load(handler, aggregate_id, alone)
            self.remember(alone)
            return loaded
        staged = working.get(aggregate_id)
        if staged is not None:
            return staged
        state = self._cache.pop(aggregate_id) if aggregate_id in self._cache else None
        if state is None:
            state = self.prefold(handler, aggregate_id)
        working[aggregate_id] = state
        return state

    # Folds off the writer thread (engine.prefetch) -------------------------------------------

    def is_cached(self, aggregate_id: UUID) -> bool:
        """Whether a batch would find the aggregate without folding it (a hint: read from
        another thread, it may be a moment stale either way)."""
        return aggregate_id in self._cache

    def prefold(self, handler: Handler, aggregate_id: UUID) -> AggregateState:
        """The aggregate folded from the store. Reads only the store, so any thread may
        call it: the worker folds cold aggregates beside the writer thread with it. Starts
        from the latest snapshot (engine/adapters/snapshots.py), then the events after it."""
        return self.snapshots.fold(handler, aggregate_id)

    def adopt(self, states: dict[UUID, AggregateState]) -> None:
        """Writer thread, before a batch: cache aggregates folded beside it, each brought
        up to date first (the log may have grown since the fold). One already cached, or
        that does not exist, is left alone."""
        working = {
            aggregate_id: self._fast_forward(state)
            for aggregate_id, state in states.items()
            if state.version > 0 and aggregate_id not in self._cache
        }
        self.remember(working)

    def _fast_forward(self, state: AggregateState) -> AggregateState:
        for stored in self.recorder.select_events(state.id, gt=state.version):
            record = decode_record(stored)
            state.apply(typed_event(record))
            state.last_hash = record.hash
        return state

    def remember(self, working: dict[UUID, AggregateState]) -> None:
        """After a commit: keep the batch's aggregates, least recently used out first."""
        for aggregate_id, state in working.items():
            if state.version > 0 and self.cache_size > 0:
                self._cache[aggregate_id] = state
                self._cache.move_to_end(aggregate_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.snapshots.committed(state for state in working.values() if state.version > 0)

    def _lookup(self, aggregate: str, aggregate_id: UUID) -> AggregateState:
        """Another aggregate for a decision to read, as the running batch sees it.

        The cache is brought up to the log's head first (``_sync``, once per batch):
        another engine worker may have written the aggregate since this one cached it, and
        a decision that reads it (evidence) is not protected by the version check of the
        aggregate it writes. An id that belongs to another kind of aggregate reads as one
        that does not exist: a cached state's kind is its type, else the first stored event
        tells (a query the claims of completed phases, whose workflows are cached, do not
        pay).
        """
        handler = next(h for (a, _), h in HANDLERS.items() if a == aggregate)
        working = self._working
        self._sync(working)
        fresh = handler.new_state(aggregate_id)
        if working is not None and aggregate_id in working:
            state = working[aggregate_id]
            return state if isinstance(state, type(fresh)) else fresh
        cached = self._cache.get(aggregate_id)
        if cached is not None:
            if not isinstance(cached, type(fresh)):
                return fresh
        else:
            first = self.recorder.select_events(aggregate_id, limit=1)
            if first and not first[0].topic.startswith(f"{aggregate}."):
                return fresh
        return self.load(handler, aggregate_id, working)

    def _sync(self, working: dict[UUID, AggregateState] | None) -> None:
        """Make every cached state (and the batch's ``working`` ones) reflect the log up to
        its head, once per batch: one query (the head) while this processor wrote all
        that is new (``_commit`` moves ``_head`` past its own writes when nothing came
        between), else a read of what is new, which drops each cached state it changed.

        It replaced a query of each looked-up aggregate's newer events, per read: a batch of
        completion claims read a workflow per claim, and that query was a fifth of the
        writer thread's time under SDK agents.
        """
        if self._synced and working is not None:
            return
        self._synced = working is not None  # outside a batch every read syncs
        top = self.recorder.max_notification_id() or 0
        head, self._head = self._head, top
        if head is None:
            self._cache.clear()  # nothing known: whatever is cached may be stale
            for state in (working or {}).values():
                self._fast_forward(state)
            return
        while head < top:
            changed = self.recorder.select_notifications(head + 1, 1000, stop=top)
            if not changed:
                break
            for n in changed:
                oid = n.originator_id
                oid = oid if isinstance(oid, UUID) else UUID(str(oid))
                cached = self._cache.get(oid)
                if cached is not None and cached.version < n.originator_version:
                    del self._cache[oid]
                staged = working.get(oid) if working else None
                if staged is not None and staged.version < n.originator_version:
                    self._fast_forward(staged)  # a target with a write of its own conflicts
            head = changed[-1].id

    def _defined_types(self, refresh: bool = False) -> list[WorkflowType]:
        """Types defined over the API, fast-forwarded on every read: another engine worker
        may have defined or replaced one since this worker cached the registry."""
        if not refresh and self._registry_memo is not None:
            return self._registry_memo  # read once per batch
        handler = HANDLERS[("workflow_type", "define")]
        registry_id = UUID(REGISTRY_ID)
        if refresh:
            self.evict([registry_id])
        state = self.load(handler, registry_id)
        for stored in self.recorder.select_events(registry_id, gt=state.version):
            record = decode_record(stored)
            state.apply(typed_event(record))
            state.last_hash = record.hash
        self._registry_memo = list(state.defined.values())  # type: ignore[attr-defined]
        return self._registry_memo

    def evict(self, ids: Sequence[UUID]) -> None:
        for aggregate_id in ids:
            self._cache.pop(aggregate_id, None)

    def evict_partitions(self, partitions: Collection[int], count: int) -> None:
        """Writer thread: forget the cached aggregates of ``partitions`` (of ``count``),
        which this engine is about to own again: another engine may have written them."""
        self.evict([a for a in self._cache if partition_of(a, count) in partitions])

    # Dedup ----------------------------------------------------------------------------------

    def recorded_outcome(self, command: Command) -> Reply | None:
        """The reply to give a repeat of this actor's command id, if it was ever accepted."""
        return self.recorded_outcomes([command])[0]

    def recorded_outcomes(self, commands: Sequence[Command]) -> list[Reply | None]:
        """For each command, the reply owed to a repeat, or None if its id is new."""
        return self._recorded_and_existing(commands, {})[0]

    def _uncached_targets(self, commands: Sequence[Command]) -> dict[UUID, Handler]:
        """The aggregates the batch writes that the cache does not hold, by id."""
        cold: dict[UUID, Handler] = {}
        for command in commands:
            try:
                aggregate_id = command.target
            except Exception:  # noqa: S112 - its decision rejects it (and logs), alone
                continue
            if aggregate_id not in self._cache:
                cold.setdefault(aggregate_id, command.handler)
        return cold

    def _recorded_and_existing(
        self, commands: Sequence[Command], aggregates: Mapping[UUID, Handler]
    ) -> tuple[list[Reply | None], set[UUID]]:
        """The replies owed to repeats (None for a new command id) and which of
        ``aggregates`` have any event, in one query for the whole batch.

        The dedup record is written last in its command's rows, in one transaction, so the
        command's last domain event sits at the position just before it.
        """
        keys = [c.record_id for c in commands]
        found = select_first_events(self.recorder, [*keys, *aggregates])
        existing = {aggregate_id for aggregate_id in aggregates if aggregate_id in found}
        replies: list[Reply | None] = []
        for command, key in zip(commands, keys, strict=True):
            record = found.get(key)
            if record is None:
                replies.append(None)
                continue
            outcome = decode_record(record).event
            if not isinstance(outcome, CommandAccepted):
                raise TypeError(f"not a dedup record: {type(outcome).__name__}")
            if outcome.fingerprint and outcome.fingerprint != command.fingerprint:
                replies.append(_reused(command))
                continue
            replies.append(
                Reply(
                    command_id=command.command_id,
                    status="duplicate",
                    aggregate_id=outcome.aggregate_id,
                    version=outcome.version,
                    position=record.id - 1,
                )
            )
        return replies, existing

    # Batches --------------------------------------------------------------------------------

    def handle_batch(self, commands: Sequence[Command], attempt: int = 0) -> list[Reply]:
        """Decide every command, record the batch in one transaction, return the replies.

        If the transaction fails on a version conflict (another writer, or the same command
        raced on two workers), the touched aggregates are evicted and each command is
        retried alone, so one conflict never rejects its neighbours.
        """
        self._synced = False
        try:
            return self._handle_batch(commands, attempt)
        finally:
            self._synced = False

    def _handle_batch(self, commands: Sequence[Command], attempt: int) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(commands)
        staged: list[_Staged] = []
        working: dict[UUID, AggregateState] = {}
        in_batch: dict[UUID, int] = {}
        repeats: list[tuple[int, int]] = []
        now = self.clock()
        self._registry_memo = None
        # One query tells both which command ids were seen before and which of the
        # uncached targets exist at all: one that does not (a workflow being started, a
        # session being opened) starts empty without reading its snapshot and events.
        cold = self._uncached_targets(commands)
        recorded, existing = self._recorded_and_existing(commands, cold)
        for aggregate_id, handler in cold.items():
            if aggregate_id not in existing:
                working[aggregate_id] = handler.new_state(aggregate_id)
        for index, command in enumerate(commands):
            key = command.record_id
            if key in in_batch:
                repeats.append((index, in_batch[key]))
                continue
            previous = recorded[index]
            if previous is not None:
                replies[index] = previous
                continue
            try:
                events = self._decide(command, now, working)
            except DomainError as error:
                replies[index] = _rejected(command, error.code, error.message, error.details)
                continue
            except Exception:
                # A bug in a decision must not take the worker down with it.
                log.exception("decision failed for %s", command.command_id)
                replies[index] = _rejected(
                    command, codes.INTERNAL_ERROR, "the engine failed on this command"
                )
                continue
            aggregate_id = command.target
            version = working[aggregate_id].version
            target = str(aggregate_id)
            outcome = CommandAccepted(
                command_id=command.command_id,
                actor=command.actor,
                aggregate=command.handler.aggregate,
                aggregate_id=target,
                version=version,
                fingerprint=command.fingerprint,
            )
            dedup, _ = encode_event(
                aggregate="command",
                aggregate_id=key,
                version=1,
                event=outcome,
                meta=EventMeta(actor=command.actor, command_id=command.command_id),
                occurred_at=now,
                prev_hash="",
            )
            events.append(dedup)
            in_batch[key] = index
            replies[index] = Reply(
                command_id=command.command_id,
                status="accepted",
                aggregate_id=target,
                version=version,
            )
            staged.append(_Staged(command, events, index))

        if staged:
            try:
                self._commit(staged, replies)
            except IntegrityError:
                self.conflicts += 1
                metrics.VERSION_CONFLICTS.inc()
                self.evict(list(working))
                if attempt >= 3:
                    return [
                        _rejected(c, codes.STORE_UNAVAILABLE, "write conflict persisted; retry")
                        for c in commands
                    ]
                # Redo one by one: each command refolds and may now be a duplicate.
                return [self.handle_batch([c], attempt + 1)[0] for c in commands]
            except Exception as error:
                # Nothing was recorded: say so, so the client retries with the same command id.
                self.evict(list(working))
                log.warning("store write failed: %s", error)
                for item in staged:
                    replies[item.reply_index] = _rejected(
                        item.command,
                        codes.STORE_UNAVAILABLE,
                        f"the event store is unavailable: {error}",
                    )
            else:
                self.remember(working)
        else:
            self.remember(working)
        for index, first in repeats:
            # A retry that arrived in the same batch as its original shares its fate.
            reply = replies[first]
            assert reply is not None
            if commands[index].fingerprint != commands[first].fingerprint:
                replies[index] = _reused(commands[index])
            elif reply.status == "accepted":
                replies[index] = msgspec.structs.replace(reply, status="duplicate")
            else:
                replies[index] = reply
        return [r for r in replies if r is not None]

    def _decide(
        self, command: Command, now: datetime, working: dict[UUID, AggregateState]
    ) -> list[StoredEvent]:
        handler = command.handler
        payload = command.envelope.payload
        aggregate_id = command.target
        state = self.load(handler, aggregate_id, working)
        actor = command.actor
        rule = RULES[(handler.aggregate, handler.command)]
        roles = self.context.roles.roles_of(actor)
        authorize(rule, actor, roles, state, payload, f"{handler.aggregate}.{handler.command}")
        self._working = working
        try:
            decided = handler.decide(state, payload, command.actor, now, self.context)
        finally:
            self._working = None
        meta = EventMeta(
            actor=command.actor,
            command_id=command.command_id,
            correlation_id=command.envelope.correlation_id or command.command_id,
            causation_id=command.envelope.causation_id,
        )
        stored: list[StoredEvent] = []
        for event in decided:
            record, digest = encode_event(
                aggregate=handler.aggregate,
                aggregate_id=aggregate_id,
                version=state.version + 1,
                event=event,
                meta=meta,
                occurred_at=now,
                prev_hash=state.last_hash,
            )
            state.apply(event)
            state.last_hash = digest
            stored.append(record)
        return stored

    def _commit(self, staged: list[_Staged], replies: list[Reply | None]) -> None:
        """One transaction for the whole batch; stamps each reply with its log position."""
        rows = [e for s in staged for e in s.events]
        positions = self.recorder.insert_events(rows)
        if not positions:
            return
        if self._head is not None and positions[0] == self._head + 1:
            self._head = positions[-1]  # nothing came between: the cache stays in step
        if self.on_commit is not None:
            try:
                self.on_commit(rows, positions)
            except Exception:  # committed already: a listener must not turn it into a failure
                log.exception("a commit listener failed")
        offset = 0
        for item in staged:
            offset += len(item.events)
            reply = replies[item.reply_index]
            assert reply is not None
            if len(item.events) < 2:
                continue  # accepted with nothing to record (an idempotent repeat)
            # The item's rows are its domain events, then its dedup record.
            replies[item.reply_index] = msgspec.structs.replace(
                reply, position=positions[offset - 2]
            )


def _reused(command: Command) -> Reply:
    return _rejected(
        command,
        codes.COMMAND_ID_REUSED,
        f"command id {command.command_id!r} was already used for a different command; "
        "use a new id for a new command",
    )


def _rejected(
    command: Command, code: str, message: str, details: dict[str, Any] | None = None
) -> Reply:
    aggregate_id: str | None
    try:
        aggregate_id = str(command.target)
    except Exception:  # a rejection must never fail: the target may be what was wrong
        aggregate_id = None
    return Reply(
        command_id=command.command_id,
        status="rejected",
        aggregate_id=aggregate_id,
        error=ErrorInfo(code=code, message=message, details=details),
    )
