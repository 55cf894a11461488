"""The command processor against a real SQLite event store (a file in tmp_path)."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec
import pytest
from chorus.contracts import errors as codes
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.sessions import CancelSession, OpenSession, SubmitResult, Task, TimeOutSession
from chorus.engine.domain.authz import StaticRoles
from chorus.engine.domain.context import EngineContext
from chorus.engine.domain.session import SessionState
from chorus.engine.handlers import HANDLERS, Handler
from chorus.engine.processor import Command, Processor
from chorus.events.codec import (
    GENESIS_HASH,
    StoredBody,
    decode_record,
    recompute_hash,
)
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder, select_aggregate_notifications
from eventsourcing.persistence import ApplicationRecorder, IntegrityError, StoredEvent
from prometheus_client import REGISTRY

from .conftest import FakeClock

SESSION = "session"


def new_sid() -> str:
    return str(uuid.uuid4())


def command(
    actor: str, name: str, command_id: str, payload: msgspec.Struct, **envelope: Any
) -> Command:
    return Command(
        actor=actor,
        handler=HANDLERS[(SESSION, name)],
        envelope=Envelope(command_id=command_id, payload=payload, **envelope),
    )


def open_session(
    sid: str,
    participants: Sequence[str] = ("a", "b", "c"),
    *,
    actor: str = "boss",
    command_id: str | None = None,
    timeout: int = 600,
) -> Command:
    payload = OpenSession(
        session_id=sid,
        participants=list(participants),
        task=Task(description="work"),
        timeout_seconds=timeout,
    )
    return command(actor, "open", command_id or f"open-{sid}", payload)


def submit(sid: str, actor: str, command_id: str | None = None, success: bool = True) -> Command:
    payload = SubmitResult(session_id=sid, result={"by": actor}, success=success)
    return command(actor, "submit_result", command_id or f"submit-{actor}-{sid}", payload)


def cancel(sid: str, actor: str = "boss", command_id: str = "cancel") -> Command:
    return command(actor, "cancel", command_id, CancelSession(session_id=sid))


def timeout(sid: str) -> Command:
    return command("system", "timeout", f"timeout:{sid}", TimeOutSession(session_id=sid))


def stored_session(recorder: ApplicationRecorder, sid: str) -> list[Any]:
    return [decode_record(s) for s in recorder.select_events(uuid.UUID(sid))]


def event_types(recorder: ApplicationRecorder, sid: str) -> list[str]:
    return [r.type for r in stored_session(recorder, sid)]


def last_position(recorder: ApplicationRecorder) -> int:
    return recorder.max_notification_id() or 0


def metric_value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def statuses(replies: Sequence[Reply]) -> list[str]:
    return [r.status for r in replies]


def assert_chain_intact(recorder: ApplicationRecorder, sid: str) -> None:
    """Each event links to the previous one's hash and its hash is what a verifier computes."""
    stored = recorder.select_events(uuid.UUID(sid))
    prev = GENESIS_HASH
    for expected_version, row in enumerate(stored, start=1):
        body = msgspec.json.decode(row.state, type=StoredBody)
        assert row.originator_version == expected_version
        assert body.prev_hash == prev
        recomputed = recompute_hash(row)
        assert recomputed == body.hash
        prev = body.hash


def watch_inserts(recorder: ApplicationRecorder) -> list[str]:
    """Record the outcome of each ``insert_events`` call: "ok" or "conflict"."""
    outcomes: list[str] = []
    real_insert = recorder.insert_events

    def spy(events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        try:
            result = real_insert(events, **kwargs)
        except IntegrityError:
            outcomes.append("conflict")
            raise
        outcomes.append("ok")
        return result

    recorder.insert_events = spy  # type: ignore[method-assign]
    return outcomes


@pytest.fixture
def processor(recorder: ApplicationRecorder, clock: FakeClock) -> Processor:
    return Processor(recorder, clock=clock)


@pytest.fixture
def second_recorder(
    database_url: str, recorder: ApplicationRecorder
) -> Iterator[ApplicationRecorder]:
    """Another connection to the same database, as a second engine process would have."""
    rec = open_recorder(database_url)
    yield rec
    close_recorder(rec)


# Group commit ------------------------------------------------------------------------------


def test_a_batch_is_recorded_in_one_insert(
    processor: Processor, recorder: ApplicationRecorder
) -> None:
    inserts: list[list[StoredEvent]] = []
    real_insert = recorder.insert_events

    def spy(events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        inserts.append(list(events))
        return real_insert(events, **kwargs)

    recorder.insert_events = spy  # type: ignore[method-assign]
    x, y = new_sid(), new_sid()
    replies = processor.handle_batch([open_session(x), submit(x, "a"), open_session(y)])

    assert statuses(replies) == ["accepted", "accepted", "accepted"]
    assert [(r.aggregate_id, r.version) for r in replies] == [(x, 1), (x, 2), (y, 1)]
    assert len(inserts) == 1
    # Three domain events, each followed in its command's rows by a dedup record.
    assert [e.topic for e in inserts[0]] == [
        "session.SessionOpened",
        "command.CommandAccepted",
        "session.ResultSubmitted",
        "command.CommandAccepted",
        "session.SessionOpened",
        "command.CommandAccepted",
    ]
    assert event_types(recorder, x) == ["SessionOpened", "ResultSubmitted"]
    assert event_types(recorder, y) == ["SessionOpened"]


def test_replies_keep_the_order_of_their_commands(processor: Processor) -> None:
    x = new_sid()
    batch = [open_session(x), submit(x, "mallory"), submit(x, "a"), cancel(x, actor="a")]
    replies = processor.handle_batch(batch)
    assert [r.command_id for r in replies] == [c.command_id for c in batch]
    assert statuses(replies) == ["accepted", "rejected", "accepted", "rejected"]


def test_replies_carry_the_position_of_the_last_domain_event(
    processor: Processor, recorder: ApplicationRecorder
) -> None:
    x = new_sid()
    replies = processor.handle_batch([open_session(x, ["a", "b"]), submit(x, "a"), submit(x, "b")])
    positions = {
        n.originator_version: n.id for n in select_aggregate_notifications(recorder, uuid.UUID(x))
    }
    assert event_types(recorder, x) == [
        "SessionOpened",
        "ResultSubmitted",
        "ResultSubmitted",
        "SessionFinalised",
    ]
    assert replies[0].position == positions[1]
    assert replies[1].position == positions[2]
    # The last submit caused two events: the reply points at the later one, the finalisation.
    assert replies[2].version == 4
    assert replies[2].position == positions[4]
    assert replies[0].position < replies[1].position < replies[2].position
    # The dedup records come after: the log ends with the last one, past every reply.
    assert last_position(recorder) > replies[2].position


def test_events_carry_the_envelope_metadata(
    processor: Processor, recorder: ApplicationRecorder
) -> None:
    x = new_sid()
    with_ids = command(
        "boss",
        "open",
        "o-1",
        OpenSession(session_id=x, participants=["a"], task=Task(description="w")),
        correlation_id="flow-9",
        causation_id="cause-3",
    )
    processor.handle_batch([with_ids, submit(x, "a", command_id="s-1")])
    opened, submitted, _final = stored_session(recorder, x)
    assert (opened.actor, opened.command_id, opened.correlation_id, opened.causation_id) == (
        "boss",
        "o-1",
        "flow-9",
        "cause-3",
    )
    # Without a correlation id the command id stands in for it.
    assert (submitted.actor, submitted.correlation_id, submitted.causation_id) == ("a", "s-1", None)
    assert opened.occurred_at == processor.clock()


# Dedup -------------------------------------------------------------------------------------


def test_a_repeated_command_in_a_later_batch_is_a_duplicate_and_writes_nothing(
    processor: Processor, recorder: ApplicationRecorder
) -> None:
    x = new_sid()
    first = processor.handle_batch(
        [open_session(x, command_id="o"), submit(x, "a", command_id="s")]
    )
    before = last_position(recorder)

    again = processor.handle_batch(
        [submit(x, "a", command_id="s"), open_session(x, command_id="o")]
    )

    assert statuses(again) == ["duplicate", "duplicate"]
    assert (
        (again[0].aggregate_id, again[0].version)
        == (first[1].aggregate_id, first[1].version)
        == (x, 2)
    )
    assert (again[1].aggregate_id, again[1].version) == (x, 1)
    assert again[0].error is None
    assert last_position(recorder) == before
    assert event_types(recorder, x) == ["SessionOpened", "ResultSubmitted"]


def test_a_repeat_with_a_different_payload_is_a_reused_id_not_a_duplicate(
    processor: Processor,
) -> None:
    x = new_sid()
    processor.handle_batch([open_session(x, command_id="o")])
    replay = processor.handle_batch([open_session(new_sid(), command_id="o")])
    assert statuses(replay) == ["rejected"]
    assert replay[0].error is not None
    assert replay[0].error.code == codes.COMMAND_ID_REUSED


def test_a_repeat_within_one_batch_is_a_duplicate(
    processor: Processor, recorder: ApplicationRecorder
) -> None:
    x = new_sid()
    replies = processor.handle_batch(
        [
            open_session(x, command_id="o"),
            submit(x, "a", command_id="s"),
            open_session(x, command_id="o"),
        ]
    )
    assert statuses(replies) == ["accepted", "accepted", "duplicate"]
    assert (replies[2].aggregate_id, replies[2].version) == (x, 1)
    assert event_types(recorder, x) == ["SessionOpened", "ResultSubmitted"]


def test_the_same_command_id_from_another_actor_is_not_a_duplicate(
    processor: Processor, recorder: ApplicationRecorder
) -> None:
    x = new_sid()
    processor.handle_batch([open_session(x)])
    replies = processor.handle_batch([submit(x, "a", command_id="same")])
    replies += processor.handle_batch([submit(x, "b", command_id="same")])
    assert statuses(replies) == ["accepted", "accepted"]
    assert [r.version for r in replies] == [2, 3]
    assert event_types(recorder, x) == ["SessionOpened", "ResultSubmitted", "ResultSubmitted"]


def test_the_dedup_record_keeps_the_original_outcome(processor: Processor) -> None:
    x = new_sid()
    processor.handle_batch([open_session(x), submit(x, "a", command_id="s")])
    assert processor.recorded_outcome(submit(x, "a", command_id="s")) == Reply(
        command_id="s", status="duplicate", aggregate_id=x, version=2, position=3
    )
    assert processor.recorded_outcome(submit(x, "b", command_id="s")) is None


def test_a_command_id_reused_for_another_command_is_rejected_not_deduplicated(
    processor: Processor, recorder: ApplicationRecorder
) -> None:
    x = new_sid()
    processor.handle_batch([open_session(x, command_id="o")])
    before = last_position(recorder)
    later = processor.handle_batch([command("boss", "cancel", "o", CancelSession(session_id=x))])
    # Same actor, same id, a different command: neither a duplicate nor a second effect.
    assert later[0].status == "rejected"
    assert later[0].error is not None
    assert later[0].error.code == codes.COMMAND_ID_REUSED
    assert last_position(recorder) == before


def test_a_reused_command_id_within_one_batch_is_rejected(processor: Processor) -> None:
    x = new_sid()
    replies = processor.handle_batch(
        [
            open_session(x),
            submit(x, "a", command_id="k"),
            submit(x, "a", command_id="k", success=False),
        ]
    )
    assert statuses(replies) == ["accepted", "accepted", "rejected"]
    assert replies[2].error is not None
    assert replies[2].error.code == codes.COMMAND_ID_REUSED


def test_a_rejected_command_id_can_be_retried_once_the_rule_holds(processor: Processor) -> None:
    x = new_sid()
    early = processor.handle_batch([submit(x, "a", command_id="s")])
    assert early[0].status == "rejected"
    assert early[0].error is not None
    assert early[0].error.code == codes.SESSION_NOT_FOUND
    processor.handle_batch([open_session(x)])
    later = processor.handle_batch([submit(x, "a", command_id="s")])
    assert statuses(later) == ["accepted"]


# Rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda x: submit(x, "mallory"), codes.NOT_A_PARTICIPANT),
        (lambda x: submit(x, "a", command_id="second-try"), codes.ALREADY_SUBMITTED),
        (lambda x: open_session(x, command_id="reopen"), codes.SESSION_EXISTS),
        (lambda x: open_session(x, ["a", "a"], command_id="reopen"), codes.SESSION_EXISTS),
        (lambda x: cancel(x, actor="a"), codes.NOT_AUTHORIZED),
        (lambda x: timeout(x), codes.NOT_DUE),
        (lambda x: submit(new_sid(), "a"), codes.SESSION_NOT_FOUND),
    ],
)
def test_rejected_commands_write_nothing(
    processor: Processor, recorder: ApplicationRecorder, make: Any, code: str
) -> None:
    x = new_sid()
    processor.handle_batch([open_session(x), submit(x, "a")])
    before = last_position(recorder)
    cmd = make(x)
    replies = processor.handle_batch([cmd])
    assert replies[0].status == "rejected"
    assert replies[0].error is not None
    assert replies[0].error.code == code
    assert replies[0].version is None
    assert replies[0].position == 0
    assert replies[0].aggregate_id == cmd.envelope.payload.session_id
    assert last_position(recorder) == before
    assert processor.recorded_outcome(cmd) is None


def test_invalid_open_commands_are_rejected_with_their_details(processor: Processor) -> None:
    replies = processor.handle_batch([open_session(new_sid(), ["a", "b", "a"])])
    assert replies[0].error is not None
    assert replies[0].error.code == codes.INVALID_COMMAND
    assert replies[0].error.details == {"field": "payload.participants", "duplicates": ["a"]}


def test_a_rejection_does_not_affect_its_neighbours_in_the_batch(
    processor: Processor, recorder: ApplicationRecorder
) -> None:
    x = new_sid()
    replies = processor.handle_batch([open_session(x), submit(x, "mallory"), submit(x, "b")])
    assert statuses(replies) == ["accepted", "rejected", "accepted"]
    assert replies[2].version == 2
    assert event_types(recorder, x) == ["SessionOpened", "ResultSubmitted"]


def test_a_failing_decision_is_an_internal_error_that_spares_the_batch(
    processor: Processor, recorder: ApplicationRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(state: Any, cmd: Any, actor: str, now: Any) -> list[msgspec.Struct]:
        raise RuntimeError("bug in a decision")

    broken = dataclasses.replace(HANDLERS[(SESSION, "submit_result")], decide=explode)
    x = new_sid()
    bad = Command(
        actor="a",
        handler=broken,
        envelope=Envelope(command_id="b", payload=SubmitResult(session_id=x, result={})),
    )
    replies = processor.handle_batch([open_session(x), bad, submit(x, "b")])
    assert statuses(replies) == ["accepted", "rejected", "accepted"]
    assert replies[1].error is not None
    assert replies[1].error.code == "internal_error"
    assert event_types(recorder, x) == ["SessionOpened", "ResultSubmitted"]
    assert "decision failed" in caplog.text


# Time --------------------------------------------------------------------------------------


def test_a_session_times_out_only_once_its_deadline_has_passed(
    processor: Processor, recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    x = new_sid()
    processor.handle_batch([open_session(x, timeout=60), submit(x, "b")])
    clock.advance(seconds=59)
    early = processor.handle_batch([timeout(x)])
    assert early[0].error is not None
    assert early[0].error.code == codes.NOT_DUE

    clock.advance(seconds=1)
    late = processor.handle_batch([submit(x, "a"), timeout(x)])
    assert late[0].error is not None
    assert late[0].error.code == codes.SESSION_CLOSED
    assert late[1].status == "accepted"
    timed_out = stored_session(recorder, x)[-1]
    assert timed_out.type == "SessionTimedOut"
    assert timed_out.data["pending"] == ["a", "c"]

    # The engine's own timer repeats its command id: absorbed as a duplicate.
    again = processor.handle_batch([timeout(x)])
    assert statuses(again) == ["duplicate"]


def test_a_cancelled_session_refuses_results(processor: Processor) -> None:
    x = new_sid()
    replies = processor.handle_batch([open_session(x), cancel(x), submit(x, "a")])
    assert statuses(replies) == ["accepted", "accepted", "rejected"]
    assert replies[2].error is not None
    assert replies[2].error.code == codes.SESSION_CLOSED


# Rebuilding state from the store ------------------------------------------------------------


def test_a_processor_with_an_empty_cache_refolds_the_state_from_the_store(
    processor: Processor, recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    x = new_sid()
    processor.handle_batch([open_session(x), submit(x, "a")])
    fresh = Processor(recorder, clock=clock)

    handler = HANDLERS[(SESSION, "open")]
    rebuilt = fresh.load(handler, uuid.UUID(x))
    cached = processor.load(handler, uuid.UUID(x))
    assert isinstance(rebuilt, SessionState)
    assert dataclasses.asdict(rebuilt) == dataclasses.asdict(cached)  # type: ignore[call-overload]
    assert rebuilt.last_hash == stored_session(recorder, x)[-1].hash

    fresh.evict([uuid.UUID(x)])
    replies = fresh.handle_batch(
        [submit(x, "a", command_id="again"), submit(x, "mallory"), submit(x, "b"), submit(x, "c")]
    )
    assert statuses(replies) == ["rejected", "rejected", "accepted", "accepted"]
    assert replies[0].error is not None
    assert replies[0].error.code == codes.ALREADY_SUBMITTED
    assert [r.version for r in replies[2:]] == [3, 5]
    assert event_types(recorder, x)[-1] == "SessionFinalised"
    assert_chain_intact(recorder, x)


def test_a_rebuilt_processor_still_answers_duplicates(
    processor: Processor, recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    x = new_sid()
    processor.handle_batch([open_session(x, command_id="o")])
    replies = Processor(recorder, clock=clock).handle_batch([open_session(x, command_id="o")])
    assert statuses(replies) == ["duplicate"]
    assert (replies[0].aggregate_id, replies[0].version) == (x, 1)


def test_each_stored_event_chains_to_the_previous_hash_of_its_aggregate(
    processor: Processor, recorder: ApplicationRecorder
) -> None:
    x, y = new_sid(), new_sid()
    processor.handle_batch([open_session(x, ["a", "b"]), open_session(y), submit(x, "a")])
    processor.handle_batch([submit(y, "c"), submit(x, "b"), cancel(y)])
    records = stored_session(recorder, x)
    assert [r.version for r in records] == [1, 2, 3, 4]
    assert records[0].prev_hash == GENESIS_HASH
    for previous, current in itertools.pairwise(records):
        assert current.prev_hash == previous.hash
    assert len({r.hash for r in records}) == 4
    assert_chain_intact(recorder, x)
    assert_chain_intact(recorder, y)
    assert event_types(recorder, y) == ["SessionOpened", "ResultSubmitted", "SessionCancelled"]


def test_a_small_cache_evicts_the_least_recently_used_aggregate(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    small = Processor(recorder, clock=clock, cache_size=2)
    x, y, z = new_sid(), new_sid(), new_sid()
    small.handle_batch([open_session(x)])
    small.handle_batch([open_session(y)])
    small.handle_batch([submit(x, "a")])  # x is now the most recently used
    small.handle_batch([open_session(z)])
    assert set(small._cache) == {uuid.UUID(x), uuid.UUID(z)}
    # y is refolded from the store when it is needed again.
    replies = small.handle_batch([submit(y, "a")])
    assert (replies[0].status, replies[0].version) == ("accepted", 2)
    assert_chain_intact(recorder, y)


# Two writers on the same store ---------------------------------------------------------------


def test_two_processors_with_stale_caches_conflict_and_retry_without_losing_events(
    recorder: ApplicationRecorder, second_recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    one = Processor(recorder, clock=clock)
    two = Processor(second_recorder, clock=clock)
    x = new_sid()
    assert statuses(one.handle_batch([open_session(x)])) == ["accepted"]
    # Both engines now cache the session at version 1.
    assert two.load(HANDLERS[(SESSION, "open")], uuid.UUID(x)).version == 1

    inserts = watch_inserts(second_recorder)
    counted = metric_value("chorus_engine_version_conflicts_total")
    first = one.handle_batch([submit(x, "a")])
    second = two.handle_batch([submit(x, "b")])  # decided on a stale state: conflicts, retried
    assert inserts == ["conflict", "ok"]
    # The conflict is counted, by the processor and in its Prometheus counter.
    assert (one.conflicts, two.conflicts) == (0, 1)
    assert metric_value("chorus_engine_version_conflicts_total") == counted + 1

    assert (first[0].status, first[0].version) == ("accepted", 2)
    assert (second[0].status, second[0].version) == ("accepted", 3)
    assert event_types(recorder, x) == ["SessionOpened", "ResultSubmitted", "ResultSubmitted"]
    assert [r.data["agent_id"] for r in stored_session(recorder, x)[1:]] == ["a", "b"]
    assert_chain_intact(recorder, x)
    assert second[0].position == select_aggregate_notifications(recorder, uuid.UUID(x))[-1].id

    # The stale engine refolded: its next decision sees both results.
    third = one.handle_batch([submit(x, "b", command_id="b-again")])
    assert third[0].error is not None
    assert third[0].error.code == codes.ALREADY_SUBMITTED


def test_a_conflict_retries_each_command_of_the_batch_on_its_own(
    recorder: ApplicationRecorder, second_recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    one = Processor(recorder, clock=clock)
    two = Processor(second_recorder, clock=clock)
    x, y = new_sid(), new_sid()
    one.handle_batch([open_session(x), open_session(y)])
    two.load(HANDLERS[(SESSION, "open")], uuid.UUID(x))
    one.handle_batch([submit(x, "a")])

    # A stale command on x shares a batch with a fresh one on y, a rejection and a repeat.
    inserts = watch_inserts(second_recorder)
    replies = two.handle_batch(
        [submit(y, "a"), submit(x, "b"), submit(x, "mallory"), submit(y, "a")]
    )
    # The batch conflicted as a whole; then the two writers were retried alone.
    assert inserts == ["conflict", "ok", "ok"]
    assert statuses(replies) == ["accepted", "accepted", "rejected", "duplicate"]
    assert [r.version for r in replies] == [2, 3, None, 2]
    assert event_types(recorder, x) == ["SessionOpened", "ResultSubmitted", "ResultSubmitted"]
    assert event_types(recorder, y) == ["SessionOpened", "ResultSubmitted"]
    assert_chain_intact(recorder, x)
    assert_chain_intact(recorder, y)


def test_the_final_submission_after_a_conflict_finalises_on_the_fresh_state(
    recorder: ApplicationRecorder, second_recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    one = Processor(recorder, clock=clock)
    two = Processor(second_recorder, clock=clock)
    x = new_sid()
    one.handle_batch([open_session(x, ["a", "b"])])
    two.load(HANDLERS[(SESSION, "open")], uuid.UUID(x))
    one.handle_batch([submit(x, "a")])
    # On its stale state two would not finalise; after the retry it must.
    inserts = watch_inserts(second_recorder)
    replies = two.handle_batch([submit(x, "b")])
    assert inserts == ["conflict", "ok"]
    assert (replies[0].status, replies[0].version) == ("accepted", 4)
    assert event_types(recorder, x) == [
        "SessionOpened",
        "ResultSubmitted",
        "ResultSubmitted",
        "SessionFinalised",
    ]
    verdict = stored_session(recorder, x)[-1].data["verdict"]
    assert (verdict["results"], verdict["succeeded"]) == (2, 2)


class RacingProcessor(Processor):
    """A worker whose dedup lookup ran before the other worker committed the same command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blind_lookups = 1

    def _recorded_and_existing(
        self, commands: Sequence[Command], aggregates: Mapping[uuid.UUID, Handler]
    ) -> tuple[list[Reply | None], set[uuid.UUID]]:
        replies, existing = super()._recorded_and_existing(commands, aggregates)
        if self.blind_lookups:
            self.blind_lookups -= 1
            return [None] * len(commands), existing
        return replies, existing


def test_a_command_raced_on_two_workers_is_recorded_once(
    recorder: ApplicationRecorder, second_recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    one = Processor(recorder, clock=clock)
    two = RacingProcessor(second_recorder, clock=clock)
    x = new_sid()
    one.handle_batch([open_session(x)])
    two.load(HANDLERS[(SESSION, "open")], uuid.UUID(x))
    assert statuses(one.handle_batch([submit(x, "a", command_id="s")])) == ["accepted"]

    inserts = watch_inserts(second_recorder)
    replies = two.handle_batch([submit(x, "a", command_id="s")])
    assert inserts == ["conflict"]  # the retry found the other worker's dedup record
    assert statuses(replies) == ["duplicate"]
    assert (replies[0].aggregate_id, replies[0].version) == (x, 2)
    assert event_types(recorder, x) == ["SessionOpened", "ResultSubmitted"]


# Store failures -------------------------------------------------------------------------------


class FlakyRecorder:
    """Delegates to a real recorder; ``insert_events`` raises the given errors first."""

    def __init__(self, real: ApplicationRecorder, *failures: Exception) -> None:
        self.real = real
        self.failures = list(failures)
        self.attempts = 0

    def insert_events(self, events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.real.insert_events(events, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_store_outage_answers_store_unavailable_and_the_command_can_be_retried(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    flaky = FlakyRecorder(recorder, OSError("disk on fire"))
    proc = Processor(flaky, clock=clock)  # type: ignore[arg-type]
    x = new_sid()
    failed = proc.handle_batch([open_session(x, command_id="o"), submit(x, "mallory")])
    assert failed[0].status == "rejected"
    assert failed[0].error is not None
    assert failed[0].error.code == codes.STORE_UNAVAILABLE
    assert failed[1].error is not None
    assert failed[1].error.code == codes.NOT_A_PARTICIPANT  # decided before the write
    assert recorder.select_events(uuid.UUID(x)) == []
    # The half-applied state was dropped from the cache: the retry starts from the store.
    assert uuid.UUID(x) not in proc._cache

    retried = proc.handle_batch([open_session(x, command_id="o")])
    assert (retried[0].status, retried[0].version) == ("accepted", 1)
    assert event_types(recorder, x) == ["SessionOpened"]


def test_a_conflict_that_persists_is_answered_store_unavailable(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    flaky = FlakyRecorder(recorder, *(IntegrityError("conflict") for _ in range(10)))
    proc = Processor(flaky, clock=clock)  # type: ignore[arg-type]
    x = new_sid()
    replies = proc.handle_batch([open_session(x)])
    assert replies[0].error is not None
    assert replies[0].error.code == codes.STORE_UNAVAILABLE
    assert flaky.attempts == 4  # the first try and three retries
    assert recorder.select_events(uuid.UUID(x)) == []


# Regressions of bugs found while writing these tests ----------------------------------------


def test_a_worker_that_saw_a_session_missing_accepts_results_once_another_worker_opened_it(
    recorder: ApplicationRecorder, second_recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    one = Processor(recorder, clock=clock)
    two = Processor(second_recorder, clock=clock)
    x = new_sid()
    early = two.handle_batch([submit(x, "a", command_id="early")])
    assert early[0].error is not None
    assert early[0].error.code == codes.SESSION_NOT_FOUND  # true at the time
    assert statuses(one.handle_batch([open_session(x)])) == ["accepted"]

    later = two.handle_batch([submit(x, "a", command_id="later")])
    assert later[0].status == "accepted", later[0].error


def test_a_batch_wider_than_the_cache_still_sees_its_own_staged_events(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    proc = Processor(recorder, clock=clock, cache_size=1)
    x, y = new_sid(), new_sid()
    replies = proc.handle_batch([open_session(x), open_session(y), submit(x, "a")])
    assert statuses(replies) == ["accepted", "accepted", "accepted"]


def test_a_type_redefined_by_another_worker_is_used_at_once(
    recorder: ApplicationRecorder, second_recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    from chorus.contracts.workflow_types import DefineWorkflowType, Phase, WorkflowType
    from chorus.contracts.workflows import StartWorkflow

    def define(*phases: str) -> Command:
        payload = DefineWorkflowType(
            workflow_type=WorkflowType(name="custom", phases=[Phase(name=p) for p in phases])
        )
        return Command(
            actor="root",
            handler=HANDLERS[("workflow_type", "define")],
            envelope=Envelope(command_id=uuid.uuid4().hex, payload=payload),
        )

    def start_custom() -> Command:
        wid = new_sid()
        payload = StartWorkflow(workflow_id=wid, requirements="r", workflow_type="custom")
        return Command(
            actor="ops",
            handler=HANDLERS[("workflow", "start")],
            envelope=Envelope(command_id=uuid.uuid4().hex, payload=payload),
        )

    admins = EngineContext(roles=StaticRoles({"root": {"admin"}}))
    one = Processor(recorder, clock=clock, context=admins)
    two = Processor(second_recorder, clock=clock, context=admins)
    assert statuses(one.handle_batch([define("a")])) == ["accepted"]
    assert statuses(two.handle_batch([start_custom()])) == ["accepted"]  # two caches "a"
    one.handle_batch([define("x", "y")])
    started = two.handle_batch([start_custom()])
    record = decode_record(recorder.select_events(uuid.UUID(started[0].aggregate_id))[0])
    assert [p["name"] for p in record.data["phases"]] == ["x", "y"]


def test_a_new_aggregate_is_not_folded_and_an_existing_cold_one_is(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    """The batch's one lookup says which targets exist: opening new sessions reads no
    snapshot or events, while a cold session that exists is folded (and refuses a reopen)."""
    Processor(recorder, clock=clock).handle_batch([open_session(old := new_sid())])
    cold = Processor(recorder, clock=clock)  # a fresh cache: ``old`` is cold here
    folded: list[uuid.UUID] = []
    real_prefold = cold.prefold

    def prefold(handler: Handler, aggregate_id: uuid.UUID) -> Any:
        folded.append(aggregate_id)
        return real_prefold(handler, aggregate_id)

    cold.prefold = prefold  # type: ignore[method-assign]
    fresh = [new_sid(), new_sid()]
    replies = cold.handle_batch(
        [*(open_session(x) for x in fresh), open_session(old, command_id="reopen")]
    )
    assert statuses(replies) == ["accepted", "accepted", "rejected"]
    assert replies[2].error is not None and replies[2].error.code == codes.SESSION_EXISTS
    assert folded == [uuid.UUID(old)]


def test_a_command_whose_target_fails_is_rejected_alone(
    recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    """The batch's existence lookup computes every target first: one that raises must
    cost its own command only, never the batch it came in."""
    good, bad = open_session(new_sid()), open_session(new_sid(), command_id="bad")

    def broken(value: str) -> uuid.UUID:
        raise TypeError(f"cannot key {value!r}")

    bad = dataclasses.replace(bad, handler=dataclasses.replace(bad.handler, key=broken))
    replies = Processor(recorder, clock=clock).handle_batch([bad, good])
    assert statuses(replies) == ["rejected", "accepted"]
    assert replies[0].error is not None and replies[0].error.code == codes.INTERNAL_ERROR


# Reads for a decision ----------------------------------------------------------------------------


def test_another_aggregate_read_for_a_decision_is_read_from_the_cache_and_kept_to_its_kind(
    recorder: ApplicationRecorder, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached aggregate costs no query of its events while this processor wrote all that
    is new (evidence checks read the workflows of completed phases, one per claim); an id
    of another kind reads as absent, cached or not."""
    proc = Processor(recorder, clock=clock)
    x = new_sid()
    proc.handle_batch([open_session(x)])  # committed, so cached
    queries: list[dict[str, Any]] = []
    select = recorder.select_events

    def counted(*args: Any, **kwargs: Any) -> Any:
        queries.append(kwargs)
        return select(*args, **kwargs)

    monkeypatch.setattr(recorder, "select_events", counted)
    assert proc._lookup(SESSION, uuid.UUID(x)).exists
    assert queries == []
    assert not proc._lookup("workflow", uuid.UUID(x)).exists
    proc.evict([uuid.UUID(x)])
    assert not proc._lookup("workflow", uuid.UUID(x)).exists
    assert proc._lookup(SESSION, uuid.UUID(x)).exists


def test_a_read_for_a_decision_sees_what_another_processor_wrote_since_it_cached_it(
    recorder: ApplicationRecorder, second_recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    """Evidence reads are not protected by a version check: a state another engine changed
    is dropped from the cache at the next read, and one it did not change is kept."""
    one = Processor(recorder, clock=clock)
    two = Processor(second_recorder, clock=clock)
    changed, kept = new_sid(), new_sid()
    assert statuses(one.handle_batch([open_session(changed), open_session(kept)])) == [
        "accepted", "accepted"]  # fmt: skip
    assert one._lookup(SESSION, uuid.UUID(changed)).version == 1  # cached, in step
    assert statuses(two.handle_batch([submit(changed, "a")])) == ["accepted"]
    assert statuses(one.handle_batch([submit(kept, "b")])) == ["accepted"]  # after two's write
    state: Any = one._lookup(SESSION, uuid.UUID(changed))
    assert (state.version, list(state.results)) == (2, ["a"])
    assert one.is_cached(uuid.UUID(kept)) and one._lookup(SESSION, uuid.UUID(kept)).version == 2
    # Nothing new since: the next reads are the cache's.
    assert one._lookup(SESSION, uuid.UUID(changed)).version == 2


def test_a_processor_that_could_not_read_the_head_at_its_start_forgets_its_cache_at_the_first_read(
    recorder: ApplicationRecorder, second_recorder: ApplicationRecorder, clock: FakeClock
) -> None:
    one = Processor(recorder, clock=clock)
    one._head = None  # as when the store was down while the processor was made
    two = Processor(second_recorder, clock=clock)
    x, y = new_sid(), new_sid()
    assert statuses(one.handle_batch([open_session(x), open_session(y)])) == ["accepted"] * 2
    assert statuses(two.handle_batch([submit(x, "a")])) == ["accepted"]
    assert one._lookup(SESSION, uuid.UUID(x)).version == 2
    assert not one.is_cached(uuid.UUID(y))
