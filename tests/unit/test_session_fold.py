"""The CoordinationSession aggregate: the fold (``SessionState.apply``) and the decisions."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from chorus.contracts import errors as codes
from chorus.contracts.errors import HTTP_STATUS
from chorus.contracts.sessions import (
    CancelSession,
    Criteria,
    OpenSession,
    SubmitResult,
    Task,
    TimeOutSession,
)
from chorus.engine.domain import errors
from chorus.engine.domain.session import (
    SessionState,
    decide_cancel,
    decide_open,
    decide_submit,
    decide_timeout,
)
from chorus.events.codec import EventMeta, decode_record, encode_event, typed_event
from chorus.events.session import (
    ResultSubmitted,
    SessionCancelled,
    SessionFinalised,
    SessionOpened,
    SessionTimedOut,
    result_digest,
)
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SID = uuid.UUID("0b7e0c3a-6f0e-4c55-8f1e-2d6a7c9a1b01")


def open_cmd(
    participants: list[str] | tuple[str, ...] = ("a", "b", "c"),
    *,
    criteria: Criteria | None = None,
    timeout: int = 600,
    coordinator: str | None = None,
) -> OpenSession:
    return OpenSession(
        session_id=str(SID),
        participants=list(participants),
        task=Task(description="do it", criteria=criteria or Criteria()),
        timeout_seconds=timeout,
        coordinator_id=coordinator,
    )


def submit_cmd(success: bool = True, output_hash: str | None = None) -> SubmitResult:
    return SubmitResult(
        session_id=str(SID), result={"ok": success}, success=success, output_hash=output_hash
    )


def apply_all(state: SessionState, events: list[msgspec.Struct]) -> SessionState:
    for event in events:
        state.apply(event)
    return state


def opened(actor: str = "boss", **kwargs: Any) -> SessionState:
    state = SessionState(id=SID)
    return apply_all(state, decide_open(state, open_cmd(**kwargs), actor, NOW))


def submitted(state: SessionState, *agents: str, now: datetime = NOW) -> SessionState:
    for agent in agents:
        apply_all(state, decide_submit(state, submit_cmd(), agent, now))
    return state


def snapshot(state: SessionState) -> dict[str, Any]:
    """Every field of the state (copied, so later changes do not leak into the snapshot)."""
    values = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    values["results"] = dict(values["results"])
    return values


# Opening --------------------------------------------------------------------------------


def test_opening_records_the_session_with_its_deadline_and_the_actor_as_coordinator() -> None:
    state = SessionState(id=SID)
    events = decide_open(state, open_cmd(timeout=90), "boss", NOW)
    assert events == [
        SessionOpened(
            session_id=str(SID),
            coordinator_id="boss",
            opened_by="boss",
            participants=["a", "b", "c"],
            task=Task(description="do it"),
            timeout_seconds=90,
            deadline=NOW + timedelta(seconds=90),
        )
    ]
    apply_all(state, events)
    assert state.exists
    assert state.status == "open"
    assert state.version == 1
    assert state.participants == ("a", "b", "c")
    assert state.participant_set == frozenset({"a", "b", "c"})
    assert state.deadline == NOW + timedelta(seconds=90)
    assert state.pending == ["a", "b", "c"]


def test_opening_with_an_explicit_coordinator_keeps_the_opener_apart() -> None:
    state = opened(actor="opener", coordinator="coord")
    assert state.coordinator_id == "coord"
    assert state.opened_by == "opener"


def test_an_existing_session_cannot_be_opened_again() -> None:
    state = opened()
    with pytest.raises(errors.SessionExists) as caught:
        decide_open(state, open_cmd(), "boss", NOW)
    assert caught.value.code == codes.SESSION_EXISTS


def test_duplicate_participants_are_rejected_as_an_invalid_command() -> None:
    state = SessionState(id=SID)
    with pytest.raises(errors.InvalidCommand) as caught:
        decide_open(state, open_cmd(["a", "b", "a", "c", "c"]), "boss", NOW)
    assert caught.value.code == codes.INVALID_COMMAND
    assert caught.value.details == {"field": "payload.participants", "duplicates": ["a", "c"]}
    assert not state.exists


def test_min_results_above_the_number_of_participants_is_rejected() -> None:
    state = SessionState(id=SID)
    with pytest.raises(errors.InvalidCriteria) as caught:
        decide_open(state, open_cmd(["a", "b"], criteria=Criteria(min_results=3)), "boss", NOW)
    assert caught.value.code == codes.INVALID_CRITERIA
    assert caught.value.details == {"field": "payload.task.criteria.min_results"}
    assert "min_results=3" in caught.value.message


def test_min_results_equal_to_the_number_of_participants_is_allowed() -> None:
    state = opened(participants=["a", "b"], criteria=Criteria(min_results=2))
    assert state.task is not None
    assert state.task.criteria.min_results == 2


# Submitting -----------------------------------------------------------------------------


def test_a_participant_result_is_recorded_without_finalising_while_others_are_pending() -> None:
    state = opened()
    events = decide_submit(state, submit_cmd(output_hash="h"), "a", NOW)
    assert events == [
        ResultSubmitted(
            agent_id="a",
            result={"ok": True},
            success=True,
            output_hash="h",
            result_digest=result_digest({"ok": True}),
            submitted_at=NOW,
        )
    ]
    apply_all(state, events)
    assert state.status == "open"
    assert state.version == 2
    assert state.pending == ["b", "c"]


def test_the_last_result_finalises_the_session_with_the_criteria_verdict() -> None:
    state = submitted(opened(criteria=Criteria(require="majority")), "a", "b")
    events = decide_submit(state, submit_cmd(success=False), "c", NOW)
    assert [type(e) for e in events] == [ResultSubmitted, SessionFinalised]
    final = events[1]
    assert isinstance(final, SessionFinalised)
    assert final.outcome == "succeeded"
    assert final.verdict.results == 3
    assert final.verdict.succeeded == 2
    assert final.reason == final.verdict.reason
    apply_all(state, events)
    assert state.status == "succeeded"
    assert state.is_closed
    assert state.outcome_reason == final.reason
    assert state.version == 5
    assert state.pending == []


def test_a_session_whose_results_miss_the_criteria_finalises_as_failed() -> None:
    state = submitted(opened(participants=["a", "b"]), "a")
    events = decide_submit(state, submit_cmd(success=False), "b", NOW)
    apply_all(state, events)
    assert state.status == "failed"
    assert state.outcome_reason is not None
    assert "require all not met" in state.outcome_reason


def test_non_participant_cannot_submit_result() -> None:
    state = opened()
    with pytest.raises(errors.NotAParticipant) as caught:
        decide_submit(state, submit_cmd(), "mallory", NOW)
    assert caught.value.code == codes.NOT_A_PARTICIPANT


def test_a_participant_cannot_submit_twice() -> None:
    state = submitted(opened(), "a")
    with pytest.raises(errors.AlreadySubmitted) as caught:
        decide_submit(state, submit_cmd(), "a", NOW)
    assert caught.value.code == codes.ALREADY_SUBMITTED


def test_results_cannot_be_submitted_to_a_missing_session() -> None:
    with pytest.raises(errors.SessionNotFound) as caught:
        decide_submit(SessionState(id=SID), submit_cmd(), "a", NOW)
    assert caught.value.code == codes.SESSION_NOT_FOUND


def test_results_cannot_be_submitted_after_the_session_is_finalised() -> None:
    state = submitted(opened(participants=["a", "b", "c"]), "a", "b", "c")
    assert state.status == "succeeded"
    # "closed" is checked before "already submitted".
    with pytest.raises(errors.SessionClosed) as caught:
        decide_submit(state, submit_cmd(), "a", NOW)
    assert caught.value.code == codes.SESSION_CLOSED
    assert caught.value.details == {"status": "succeeded"}


def test_results_cannot_be_submitted_after_the_session_is_cancelled() -> None:
    state = opened()
    apply_all(state, decide_cancel(state, CancelSession(session_id=str(SID)), "boss", NOW))
    with pytest.raises(errors.SessionClosed) as caught:
        decide_submit(state, submit_cmd(), "a", NOW)
    assert caught.value.details == {"status": "cancelled"}


@pytest.mark.parametrize("late", [timedelta(0), timedelta(microseconds=1), timedelta(hours=1)])
def test_results_cannot_be_submitted_at_or_after_the_deadline(late: timedelta) -> None:
    state = opened(timeout=60)
    assert state.deadline is not None
    with pytest.raises(errors.SessionClosed) as caught:
        decide_submit(state, submit_cmd(), "a", state.deadline + late)
    assert caught.value.details == {"deadline": state.deadline.isoformat()}
    assert "deadline" in caught.value.message


def test_results_are_accepted_until_just_before_the_deadline() -> None:
    state = opened(timeout=60)
    assert state.deadline is not None
    events = decide_submit(state, submit_cmd(), "a", state.deadline - timedelta(microseconds=1))
    assert [type(e) for e in events] == [ResultSubmitted]


def test_results_cannot_be_submitted_after_the_session_timed_out() -> None:
    state = opened(timeout=60)
    assert state.deadline is not None
    apply_all(
        state, decide_timeout(state, TimeOutSession(session_id=str(SID)), "system", state.deadline)
    )
    with pytest.raises(errors.SessionClosed) as caught:
        decide_submit(state, submit_cmd(), "a", NOW)
    assert caught.value.details == {"status": "timed_out"}


# Cancelling -----------------------------------------------------------------------------


def test_the_coordinator_may_cancel_with_a_reason() -> None:
    state = opened(actor="opener", coordinator="coord")
    events = decide_cancel(
        state, CancelSession(session_id=str(SID), reason="changed plans"), "coord", NOW
    )
    assert events == [SessionCancelled(reason="changed plans", cancelled_by="coord")]
    apply_all(state, events)
    assert state.status == "cancelled"
    assert state.outcome_reason == "changed plans"


def test_the_opener_may_cancel_even_when_someone_else_coordinates() -> None:
    state = opened(actor="opener", coordinator="coord")
    events = decide_cancel(state, CancelSession(session_id=str(SID)), "opener", NOW)
    assert events == [SessionCancelled(reason="cancelled", cancelled_by="opener")]


def test_a_closed_session_cannot_be_cancelled() -> None:
    state = opened()
    apply_all(state, decide_cancel(state, CancelSession(session_id=str(SID)), "boss", NOW))
    with pytest.raises(errors.SessionClosed):
        decide_cancel(state, CancelSession(session_id=str(SID)), "boss", NOW)


def test_a_missing_session_cannot_be_cancelled() -> None:
    with pytest.raises(errors.SessionNotFound):
        decide_cancel(SessionState(id=SID), CancelSession(session_id=str(SID)), "boss", NOW)


# Timing out -----------------------------------------------------------------------------


def test_a_timeout_before_the_deadline_is_not_due() -> None:
    state = opened(timeout=60)
    with pytest.raises(errors.NotDue) as caught:
        decide_timeout(
            state, TimeOutSession(session_id=str(SID)), "system", NOW + timedelta(seconds=59)
        )
    assert caught.value.code == codes.NOT_DUE


def test_a_timeout_at_the_deadline_records_the_pending_participants_in_order() -> None:
    state = submitted(opened(participants=["c", "a", "b"], timeout=60), "a")
    assert state.deadline is not None
    events = decide_timeout(state, TimeOutSession(session_id=str(SID)), "system", state.deadline)
    assert events == [SessionTimedOut(deadline=state.deadline, pending=["c", "b"])]
    apply_all(state, events)
    assert state.status == "timed_out"
    assert state.outcome_reason == "deadline passed"


def test_a_timeout_of_a_closed_session_is_refused() -> None:
    state = opened(timeout=60)
    apply_all(state, decide_cancel(state, CancelSession(session_id=str(SID)), "boss", NOW))
    with pytest.raises(errors.SessionClosed):
        decide_timeout(
            state, TimeOutSession(session_id=str(SID)), "system", NOW + timedelta(days=1)
        )


def test_a_timeout_of_a_missing_session_is_refused() -> None:
    with pytest.raises(errors.SessionNotFound):
        decide_timeout(SessionState(id=SID), TimeOutSession(session_id=str(SID)), "system", NOW)


# The fold -------------------------------------------------------------------------------


def test_the_fold_refuses_events_of_other_aggregates() -> None:
    state = SessionState(id=SID)
    with pytest.raises(TypeError, match="not a session event"):
        state.apply(Criteria())
    assert state.version == 0


def test_a_new_state_does_not_exist_and_is_not_closed() -> None:
    state = SessionState(id=SID)
    assert not state.exists
    assert not state.is_closed
    assert state.status == "new"


# Property: replaying the recorded events reproduces the state ----------------------------

AGENTS = ["a", "b", "c", "d"]
ACTORS = [*AGENTS, "boss", "coord", "mallory", "system"]

valid_open_st = st.tuples(
    st.just("open"),
    st.sampled_from(ACTORS),
    st.lists(st.sampled_from(AGENTS), min_size=1, max_size=4, unique=True),
    st.integers(min_value=1, max_value=3),
    st.sampled_from(["all", "majority", "any"]),
    st.sampled_from(["output_hash", None]),
    st.integers(min_value=30, max_value=300),
    st.sampled_from([None, "coord"]),
)
any_open_st = st.tuples(
    st.just("open"),
    st.sampled_from(ACTORS),
    st.lists(st.sampled_from(AGENTS), min_size=1, max_size=5),  # may repeat a participant
    st.integers(min_value=1, max_value=5),  # may exceed the participants
    st.sampled_from(["all", "majority", "any"]),
    st.sampled_from(["output_hash", None]),
    st.integers(min_value=1, max_value=300),
    st.sampled_from([None, "coord"]),
)
submit_st = st.tuples(
    st.just("submit"),
    st.sampled_from([*AGENTS, *AGENTS, *AGENTS, "mallory", "boss"]),
    st.booleans(),
    st.sampled_from([None, "h1", "h2"]),
)
cancel_st = st.tuples(st.just("cancel"), st.sampled_from(ACTORS))
timeout_st = st.tuples(st.just("timeout"))
advance_st = st.tuples(st.just("advance"), st.integers(min_value=0, max_value=60))
command_st = st.one_of(
    submit_st,
    submit_st,
    submit_st,
    submit_st,
    submit_st,
    submit_st,
    any_open_st,
    cancel_st,
    timeout_st,
    advance_st,
)
# Usually start with a valid open so that the later commands meet an existing session.
steps_st = st.builds(
    lambda first, rest: [*first, *rest],
    st.sampled_from([True] * 9 + [False]).flatmap(
        lambda opens: st.tuples(valid_open_st) if opens else st.just(())
    ),
    st.lists(command_st, max_size=30),
)


def run(state: SessionState, step: tuple[Any, ...], now: datetime) -> list[msgspec.Struct]:
    kind = step[0]
    if kind == "open":
        _, actor, participants, min_results, require, agree_on, timeout, coordinator = step
        cmd = OpenSession(
            session_id=str(SID),
            participants=participants,
            task=Task(
                description="t",
                criteria=Criteria(min_results=min_results, require=require, agree_on=agree_on),
            ),
            timeout_seconds=timeout,
            coordinator_id=coordinator,
        )
        return decide_open(state, cmd, actor, now)
    if kind == "submit":
        _, actor, success, output_hash = step
        payload = SubmitResult(
            session_id=str(SID),
            result={"n": len(state.results)},
            success=success,
            output_hash=output_hash,
        )
        return decide_submit(state, payload, actor, now)
    if kind == "cancel":
        return decide_cancel(state, CancelSession(session_id=str(SID)), step[1], now)
    return decide_timeout(state, TimeOutSession(session_id=str(SID)), "system", now)


@settings(max_examples=300, deadline=None)
@given(steps=steps_st)
def test_replaying_the_recorded_events_reproduces_the_state(steps: list[tuple[Any, ...]]) -> None:
    state = SessionState(id=SID)
    recorded: list[msgspec.Struct] = []
    now = NOW
    for step in steps:
        if step[0] == "advance":
            now += timedelta(seconds=step[1])
            continue
        before = snapshot(state)
        was_closed = state.is_closed
        refusal: errors.DomainError | None = None
        try:
            events = run(state, step, now)
        except errors.DomainError as error:
            refusal, events = error, []
        # Every refusal carries a stable code from the contracts.
        assert refusal is None or refusal.code in HTTP_STATUS
        # Deciding never changes the state: only the fold does.
        assert snapshot(state) == before
        if was_closed:
            assert events == []  # a closed session is final
        apply_all(state, events)
        recorded.extend(events)

    note_event(f"final status: {state.status}")
    assert state.version == len(recorded)
    assert len(state.results) <= len(state.participants)

    replayed = apply_all(SessionState(id=SID), recorded)
    assert snapshot(replayed) == snapshot(state)

    # The same holds when the events go through the stored form and back.
    prev_hash = "0" * 64
    decoded = SessionState(id=SID)
    for version, event in enumerate(recorded, start=1):
        stored, prev_hash = encode_event(
            aggregate="session",
            aggregate_id=SID,
            version=version,
            event=event,
            meta=EventMeta(actor="x", command_id=f"c{version}"),
            occurred_at=NOW,
            prev_hash=prev_hash,
        )
        decoded.apply(typed_event(decode_record(stored)))
    assert snapshot(decoded) == snapshot(state)
