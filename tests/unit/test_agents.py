"""Agents as pure logic: the fold, registry rules, evidence checks, quality, routing and
the participant-loss policies (no bus, no store: contexts are plain functions)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chorus.contracts.agents import (
    MarkOffline,
    MarkOnline,
    RegisterAgent,
    VerifyCompletion,
    VerifyCompletions,
    agent_uuid,
    result_hash,
)
from chorus.contracts.sessions import OpenSession, ReportParticipantLost, SubmitResult, Task
from chorus.engine.domain import errors
from chorus.engine.domain.agent import (
    AgentState,
    decide_mark_offline,
    decide_mark_online,
    decide_register,
    decide_verify_completion,
    decide_verify_completions,
)
from chorus.engine.domain.context import EngineContext
from chorus.engine.domain.evidence import CLOCK_SKEW, quality_parts, quality_score
from chorus.engine.domain.routing import route
from chorus.engine.domain.session import (
    SessionState,
    decide_open,
    decide_participant_lost,
    decide_submit,
)
from chorus.events.agent import CompletionRejected, CompletionVerified
from chorus.events.reliability import reliability_score, success_rate

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SID = uuid.UUID("0b7e0c3a-6f0e-4c55-8f1e-2d6a7c9a1b01")


def agent(name: str, caps: tuple[str, ...] = (), status: str = "online", verified: int = 0,
          rejected: int = 0) -> AgentState:  # fmt: skip
    state = AgentState(id=agent_uuid(name))
    for event in decide_register(state, RegisterAgent(name=name, capabilities=list(caps)),
                                 name, NOW):  # fmt: skip
        state.apply(event)
    state.status, state.verified, state.rejected = status, verified, rejected
    return state


def fold(state: Any, events: list[Any]) -> Any:
    for event in events:
        state.apply(event)
    return state


def test_reliability_is_laplace_smoothed_and_success_rate_is_observed() -> None:
    assert reliability_score(0, 0) == 0.5
    assert reliability_score(1, 0) == pytest.approx(2 / 3, abs=1e-6)
    assert reliability_score(10, 0) == pytest.approx(11 / 12, abs=1e-6)
    assert reliability_score(3, 1) == pytest.approx(4 / 6, abs=1e-6)
    assert success_rate(0, 0) is None
    assert success_rate(3, 1) == 0.75


def test_registration_is_idempotent_for_the_owner_only() -> None:
    state = agent("a1", ("py",))
    assert state.status == "online" and state.owner == "a1"
    assert decide_register(state, RegisterAgent(name="a1", capabilities=["py"]), "a1", NOW) == []
    with pytest.raises(errors.AgentNameTaken):
        decide_register(state, RegisterAgent(name="a1"), "someone-else", NOW)


def test_liveness_transitions_only_change_what_is_true() -> None:
    state = agent("a1")
    with pytest.raises(errors.NoChange):
        decide_mark_online(state, MarkOnline(agent_id="a1", last_seen=NOW), "system", NOW)
    stale = MarkOffline(agent_id="a1", last_seen=NOW - timedelta(hours=1), missed_heartbeats=3)
    with pytest.raises(errors.NoChange, match="seen after"):
        decide_mark_offline(state, stale, "system", NOW)
    later = NOW + timedelta(seconds=30)
    offline = MarkOffline(agent_id="a1", last_seen=later, missed_heartbeats=3)
    fold(state, decide_mark_offline(state, offline, "system", later))
    assert state.status == "offline"
    fold(state, decide_mark_online(state, MarkOnline(agent_id="a1", last_seen=later), "s", later))
    assert state.status == "online" and state.version == 3


def test_routing_ranks_by_reliability_then_id_among_eligible_online_agents() -> None:
    agents = [
        agent("zed", ("py",), verified=3),  # 4/5 = 0.8
        agent("amy", ("py", "go"), verified=3),  # 0.8, wins the tie by id
        agent("bob", ("py",)),  # 0.5
        agent("off", ("py",), status="offline", verified=50),
        agent("gopher", ("go",), verified=50),
    ]
    routing = route(agents, ["py"], 2)
    assert routing.chosen == ["amy", "zed"]
    assert [c.agent_id for c in routing.candidates] == ["amy", "zed", "bob"]
    assert routing.eligible == 3
    assert route(agents, ["py"], 1, exclude={"amy"}).chosen == ["zed"]
    with pytest.raises(errors.NotEnoughAgents) as caught:
        route(agents, ["py", "go"], 2)
    assert caught.value.details == {"found": 1, "required": 2, "capabilities": ["go", "py"]}


def session_with(participants: list[str], policy: str = "wait", caps: tuple[str, ...] = (),
                 directory: list[AgentState] = ()) -> tuple[SessionState, EngineContext]:  # fmt: skip
    ctx = EngineContext(agents=lambda: directory)
    state = SessionState(id=SID)
    opened = OpenSession(session_id=str(SID), participants=participants, capabilities=list(caps),
                         task=Task(description="t"), on_participant_lost=policy)  # fmt: skip
    return fold(state, decide_open(state, opened, "coord", NOW, ctx)), ctx


def test_routing_never_picks_the_opener_or_the_coordinator() -> None:
    ctx = EngineContext(agents=lambda: [agent(n, ("py",), verified=9 - i)
                                        for i, n in enumerate(("me", "boss", "c", "d"))])  # fmt: skip
    opened = OpenSession(session_id=str(SID), size=2, capabilities=["py"],
                         coordinator_id="boss", task=Task(description="t"))  # fmt: skip
    event = decide_open(SessionState(id=SID), opened, "me", NOW, ctx)[0]
    assert event.participants == ["c", "d"]


def test_a_routed_session_records_its_candidates() -> None:
    ctx = EngineContext(agents=lambda: [agent("a", ("py",), verified=1), agent("b", ("py",))])
    opened = OpenSession(
        session_id=str(SID), size=1, capabilities=["py"], task=Task(description="t")
    )
    event = decide_open(SessionState(id=SID), opened, "coord", NOW, ctx)[0]
    assert event.participants == ["a"]
    assert event.routing.chosen == ["a"] and len(event.routing.candidates) == 2


def test_lost_participant_policies() -> None:
    lost = ReportParticipantLost(session_id=str(SID), agent_id="b")
    waiting, _ = session_with(["a", "b"])
    events = decide_participant_lost(waiting, lost, "system", NOW)
    assert [e.action for e in events] == ["waiting"]

    failing, _ = session_with(["a", "b"], "fail_fast")
    events = decide_participant_lost(failing, lost, "system", NOW)
    assert [type(e).__name__ for e in events] == ["ParticipantLost", "SessionFinalised"]
    assert fold(failing, events).status == "failed"

    spares = [agent("c", ("py",)), agent("d", ("py",), verified=2), agent("e", ())]
    replacing, ctx = session_with(["a", "b"], "replace", ("py",), spares)
    events = decide_participant_lost(replacing, lost, "system", NOW, ctx)
    assert events[1].replacement == "d"  # the most reliable with the capability
    fold(replacing, events)
    assert replacing.participants == ("a", "d") and replacing.assigned_at["d"] == NOW
    with pytest.raises(errors.NotAParticipant):
        decide_submit(replacing, SubmitResult(session_id=str(SID), result={}), "b", NOW)
    with pytest.raises(errors.NoChange):  # b is no longer waited on
        decide_participant_lost(replacing, lost, "system", NOW, ctx)

    nobody, ctx = session_with(["a", "b"], "replace", ("py",), [])
    events = decide_participant_lost(nobody, lost, "system", NOW, ctx)
    assert [e.action for e in events] == ["waiting"] and "no replacement" in events[0].reason


def verify(session: SessionState, claim: dict[str, Any], done: set[str] = frozenset()) -> Any:
    me = agent("a")
    me.verified_tasks = set(done)
    ctx = EngineContext(load=lambda aggregate, aggregate_id: session)
    cmd = VerifyCompletion(**{"agent_id": "a", "task_id": str(SID), "output_hash": result_hash({"x": 1}),
                              "completion_time": NOW + timedelta(seconds=30), **claim})  # fmt: skip
    return decide_verify_completion(me, cmd, "a", NOW + timedelta(seconds=60), ctx)[0]


def submitted(participants: list[str], success: bool = True, at: int = 30) -> SessionState:
    """A session opened at NOW whose participant ``a`` submitted {"x": 1} at NOW + ``at`` s."""
    session, _ = session_with(participants)
    submit = SubmitResult(session_id=str(SID), result={"x": 1}, success=success)
    return fold(session, decide_submit(session, submit, "a", NOW + timedelta(seconds=at)))


def codes(verdict: Any) -> list[str]:
    return [r.code for r in getattr(verdict, "reasons", [])]


def test_evidence_checks_name_every_failed_check() -> None:
    session = submitted(["a", "b"])
    verdict = verify(session, {})
    assert isinstance(verdict, CompletionVerified)
    # taken 30 s of 600 (from the record): timeliness 0.95; agreement 1 (a lone result)
    assert verdict.quality_score == pytest.approx(0.5 + 0.3 * 0.95 + 0.2, abs=1e-6)
    bad = verify(session, {"output_hash": "x", "completion_time": NOW + timedelta(hours=1)},
                 done={str(SID)})  # fmt: skip
    assert isinstance(bad, CompletionRejected) and bad.quality_score == 0
    assert codes(bad) == ["already_verified", "hash_mismatch", "completion_in_future"]
    early = verify(session, {"completion_time": NOW - CLOCK_SKEW - timedelta(seconds=1)})
    assert codes(early) == ["completion_before_assignment"]
    assert isinstance(verify(session, {"completion_time": NOW - CLOCK_SKEW}), CompletionVerified)
    # A claim made after the result (the time of the claim) is fine; its derived response
    # time stops at the recorded result.
    late = verify(session, {"completion_time": NOW + timedelta(seconds=50)})
    assert isinstance(late, CompletionVerified) and late.response_time == 30.0
    slow = verify(session, {"response_time": 36.0})  # 30 s on record, 5 s of skew
    assert codes(slow) == ["response_time_implausible"]
    assert codes(verify(SessionState(id=SID), {})) == ["task_not_found"]
    other, _ = session_with(["b"])
    assert codes(verify(other, {})) == ["not_assigned"]
    pending, _ = session_with(["a"])
    assert codes(verify(pending, {})) == ["no_result"]
    assert codes(verify(submitted(["a"], success=False), {})) == ["result_failed"]


def test_one_task_is_one_task_however_its_id_is_spelled() -> None:
    session = submitted(["a"])
    for spelling in (str(SID).upper(), SID.hex, f"{{{SID}}}", SID.urn):
        assert codes(verify(session, {"task_id": spelling}, done={str(SID)})) == [
            "already_verified"
        ]
    assert codes(verify(session, {"task_id": f"{SID}/"})) == ["task_not_found"]


def test_work_an_agent_handed_itself_earns_no_record() -> None:
    ctx = EngineContext()
    state = SessionState(id=SID)
    opened = OpenSession(session_id=str(SID), participants=["a"], task=Task(description="t"))
    fold(state, decide_open(state, opened, "a", NOW, ctx))
    fold(state, decide_submit(state, SubmitResult(session_id=str(SID), result={"x": 1}), "a", NOW))
    assert codes(verify(state, {"completion_time": NOW})) == ["self_assigned"]


def claim_of(agent_id: str, **fields: Any) -> VerifyCompletion:
    return VerifyCompletion(**{"agent_id": agent_id, "task_id": str(SID),
                               "output_hash": result_hash({"x": 1}),
                               "completion_time": NOW + timedelta(seconds=30), **fields})  # fmt: skip


def test_claims_in_one_command_are_each_judged_as_if_alone() -> None:
    session = submitted(["a", "b"])
    ctx = EngineContext(load=lambda aggregate, aggregate_id: session)
    batch = VerifyCompletions(agent_id="a", claims=[
        claim_of("a"), claim_of("a", output_hash="x"), claim_of("a", task_id=SID.hex),
    ])  # fmt: skip
    verdicts = decide_verify_completions(agent("a"), batch, "a", NOW + timedelta(seconds=60), ctx)
    assert isinstance(verdicts[0], CompletionVerified)
    assert verdicts[0] == verify(session, {})  # the same verdict as the claim alone
    # Once verified in the batch, the task is verified for the claims after it.
    assert codes(verdicts[1]) == ["already_verified", "hash_mismatch"]
    assert codes(verdicts[2]) == ["already_verified"]


def test_claims_naming_another_agent_refuse_the_whole_command() -> None:
    """The rule authorizes the command's agent: a claim of another agent must not ride
    along (agent ``a`` claiming ``b``'s task for ``b``, or for itself under ``b``'s name)."""
    session = submitted(["a", "b"])
    ctx = EngineContext(load=lambda aggregate, aggregate_id: session)
    batch = VerifyCompletions(agent_id="a", claims=[claim_of("a"), claim_of("b")])
    with pytest.raises(errors.InvalidCommand) as refused:
        decide_verify_completions(agent("a"), batch, "a", NOW + timedelta(seconds=60), ctx)
    assert refused.value.details == {"agents": ["b"]}


def test_quality_score_formula() -> None:
    assert quality_score(quality_parts(0, 600, 1.0)) == 1.0
    assert quality_score(quality_parts(600, 600, 0.0)) == 0.5
    assert quality_score(quality_parts(900, 600, 0.5)) == 0.6
    assert quality_score(quality_parts(150, 600, 0.5)) == pytest.approx(0.5 + 0.225 + 0.1)


def test_result_hash_is_sha256_of_canonical_json() -> None:
    import hashlib

    expected = hashlib.sha256(b'{"a":[1,2],"b":"x"}').hexdigest()
    assert result_hash({"b": "x", "a": [1, 2]}) == f"sha256:{expected}"
