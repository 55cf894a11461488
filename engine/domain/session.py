"""The CoordinationSession aggregate: its state, the fold, and the decisions.

State changes only in ``SessionState.apply`` (the fold); the ``decide_*`` functions check
the invariants with named checks and return the events to record, raising a
``DomainError`` (with a stable code) instead when a rule is broken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

import msgspec
from chorus.contracts.sessions import (
    CancelSession,
    OpenSession,
    ReportParticipantLost,
    SubmitResult,
    Task,
    TimeOutSession,
)
from chorus.contracts.tasks import AcceptTask
from chorus.engine.domain import errors
from chorus.engine.domain.context import EngineContext
from chorus.engine.domain.criteria import evaluate
from chorus.engine.domain.routing import route
from chorus.events.codec import GENESIS_HASH
from chorus.events.session import (
    ParticipantLost,
    ParticipantReplaced,
    ResultSubmitted,
    SessionCancelled,
    SessionFinalised,
    SessionOpened,
    SessionTimedOut,
    TaskAccepted,
    Verdict,
    result_digest,
)

AGGREGATE = "session"
CLOSED = frozenset({"succeeded", "failed", "timed_out", "cancelled"})


@dataclass
class SessionState:
    """Everything the decisions need, rebuilt by folding the session's events."""

    id: UUID
    version: int = 0
    last_hash: str = GENESIS_HASH
    status: str = "new"
    coordinator_id: str = ""
    opened_by: str = ""
    participants: tuple[str, ...] = ()
    participant_set: frozenset[str] = frozenset()
    task: Task | None = None
    timeout_seconds: int = 0
    deadline: datetime | None = None
    results: dict[str, ResultSubmitted] = field(default_factory=dict)
    outcome_reason: str | None = None
    capabilities: frozenset[str] = frozenset()
    on_participant_lost: str = "wait"
    #: agent -> when it was given the task (opening, or replacing a lost participant);
    #: replaced agents stay here, they were assigned once.
    assigned_at: dict[str, datetime] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    #: Participants that acknowledged their session task.
    accepted: set[str] = field(default_factory=set)
    #: Agents the engine picked among more eligible ones than it needed (routing or a
    #: replacement): nobody could have steered the task to them.
    engine_chosen: set[str] = field(default_factory=set)

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def is_closed(self) -> bool:
        return self.status in CLOSED

    def apply(self, event: msgspec.Struct) -> None:
        """The fold: the only place a session's state changes."""
        match event:
            case SessionOpened():
                self.status = "open"
                self.coordinator_id = event.coordinator_id
                self.opened_by = event.opened_by
                self.participants = tuple(event.participants)
                self.participant_set = frozenset(event.participants)
                self.task = event.task
                self.timeout_seconds = event.timeout_seconds
                self.deadline = event.deadline
                self.capabilities = frozenset(event.capabilities)
                self.on_participant_lost = event.on_participant_lost
                opened_at = event.deadline - timedelta(seconds=event.timeout_seconds)
                self.assigned_at = dict.fromkeys(event.participants, opened_at)
                if event.routing is not None and event.routing.eligible > event.routing.size:
                    self.engine_chosen.update(event.routing.chosen)
            case ParticipantLost():
                self.lost.add(event.agent_id)
            case ParticipantReplaced():
                self.participants = tuple(
                    event.replacement if p == event.replaced else p for p in self.participants
                )
                self.participant_set = frozenset(self.participants)
                self.assigned_at[event.replacement] = event.assigned_at
                if event.routing.eligible > 1:
                    self.engine_chosen.add(event.replacement)
            case TaskAccepted():
                self.accepted.add(event.agent_id)
            case ResultSubmitted():
                self.results[event.agent_id] = event
            case SessionFinalised():
                self.status = event.outcome
                self.outcome_reason = event.reason
            case SessionTimedOut():
                self.status = "timed_out"
                self.outcome_reason = "deadline passed"
            case SessionCancelled():
                self.status = "cancelled"
                self.outcome_reason = event.reason
            case _:
                raise TypeError(f"not a session event: {type(event).__name__}")
        self.version += 1

    # Named checks -------------------------------------------------------------------------

    def check_exists(self) -> None:
        if not self.exists:
            raise errors.SessionNotFound(f"session {self.id} does not exist")

    def check_is_open(self, now: datetime) -> None:
        if self.is_closed:
            raise errors.SessionClosed(
                f"session {self.id} is {self.status}", {"status": self.status}
            )
        if self.deadline is not None and now >= self.deadline:
            raise errors.SessionClosed(
                f"session {self.id} passed its deadline", {"deadline": self.deadline.isoformat()}
            )

    def check_is_participant(self, agent_id: str) -> None:
        if agent_id not in self.participant_set:
            raise errors.NotAParticipant(f"{agent_id} is not a participant of session {self.id}")

    def check_has_not_submitted(self, agent_id: str) -> None:
        if agent_id in self.results:
            raise errors.AlreadySubmitted(f"{agent_id} already submitted a result")

    @property
    def pending(self) -> list[str]:
        return [p for p in self.participants if p not in self.results]


# Decisions ----------------------------------------------------------------------------------


def check_quota(cmd: OpenSession, actor: str, ctx: EngineContext) -> None:
    """An agent may hold at most ``session_quota`` open sessions naming other agents
    (routing by size always names others); staff run fleets and are not bound."""
    if ctx.session_quota <= 0 or ctx.is_operator(actor):
        return
    if cmd.participants and all(p == actor for p in cmd.participants):
        return
    held = ctx.sessions_held(actor)
    if held >= ctx.session_quota:
        raise errors.SessionQuotaExceeded(
            f"{actor} already holds {held} open sessions naming other agents "
            f"(at most {ctx.session_quota}); close or cancel one first",
            {"open": held, "quota": ctx.session_quota},
        )


def decide_open(
    state: SessionState,
    cmd: OpenSession,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    if state.exists:
        raise errors.SessionExists(f"session {state.id} already exists")
    errors.check_client_id(state.id, actor, "payload.session_id")
    if len(set(cmd.participants)) != len(cmd.participants):
        dupes = sorted({p for p in cmd.participants if cmd.participants.count(p) > 1})
        raise errors.InvalidCommand(
            "participants must be unique", {"field": "payload.participants", "duplicates": dupes}
        )
    check_quota(cmd, actor, ctx or EngineContext())
    count = cmd.size if cmd.size is not None else len(cmd.participants)
    if cmd.task.criteria.min_results > count:
        raise errors.InvalidCriteria(
            f"min_results={cmd.task.criteria.min_results} exceeds the {count} participants",
            {"field": "payload.task.criteria.min_results"},
        )
    routing = None
    participants = list(cmd.participants)
    if cmd.size is not None:
        # Never the opener or coordinator: work it handed itself earns no record.
        exclude = {actor, cmd.coordinator_id or actor}
        routing = route((ctx or EngineContext()).agents(), cmd.capabilities, cmd.size, exclude)
        participants = list(routing.chosen)
    return [
        SessionOpened(
            session_id=str(state.id),
            coordinator_id=cmd.coordinator_id or actor,
            opened_by=actor,
            participants=participants,
            task=cmd.task,
            timeout_seconds=cmd.timeout_seconds,
            deadline=now + timedelta(seconds=cmd.timeout_seconds),
            capabilities=sorted(set(cmd.capabilities)),
            on_participant_lost=cmd.on_participant_lost,
            routing=routing,
        )
    ]


def decide_submit(
    state: SessionState,
    cmd: SubmitResult,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists()
    state.check_is_participant(actor)
    state.check_is_open(now)
    state.check_has_not_submitted(actor)
    submitted = ResultSubmitted(
        agent_id=actor,
        result=cmd.result,
        success=cmd.success,
        output_hash=cmd.output_hash,
        result_digest=result_digest(cmd.result),
        submitted_at=now,
    )
    out: list[msgspec.Struct] = [submitted]
    if len(state.results) + 1 == len(state.participants):
        assert state.task is not None
        verdict = evaluate(state.task.criteria, [*state.results.values(), submitted])
        out.append(
            SessionFinalised(outcome=verdict.outcome, reason=verdict.reason, verdict=verdict)
        )
    return out


def decide_cancel(
    state: SessionState,
    cmd: CancelSession,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists()  # who may cancel: engine/domain/authz.py
    state.check_is_open(now)
    return [SessionCancelled(reason=cmd.reason, cancelled_by=actor)]


def decide_timeout(
    state: SessionState,
    cmd: TimeOutSession,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    state.check_exists()
    if state.is_closed:
        raise errors.SessionClosed(
            f"session {state.id} is {state.status}", {"status": state.status}
        )
    assert state.deadline is not None
    if now < state.deadline:
        raise errors.NotDue(f"session {state.id} is due at {state.deadline.isoformat()}")
    return [SessionTimedOut(deadline=state.deadline, pending=state.pending)]


def decide_participant_lost(
    state: SessionState,
    cmd: ReportParticipantLost,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """A pending participant went offline: the session's policy decides what follows.

    ``wait`` keeps expecting it (it may come back); ``fail_fast`` fails the session now;
    ``replace`` gives its place to the best other online agent with the session's
    capabilities, and keeps waiting if there is none.
    """
    state.check_exists()
    state.check_is_open(now)
    if cmd.agent_id not in state.pending:
        raise errors.NoChange(f"{cmd.agent_id} is not a pending participant of {state.id}")
    lost = ParticipantLost(agent_id=cmd.agent_id, reason=cmd.reason, action="waiting")
    if state.on_participant_lost == "fail_fast":
        reason = f"participant {cmd.agent_id} was lost: {cmd.reason}"
        succeeded = sum(r.success for r in state.results.values())
        verdict = Verdict(outcome="failed", reason=reason, results=len(state.results),
                          succeeded=succeeded)  # fmt: skip
        return [
            msgspec.structs.replace(lost, action="failed"),
            SessionFinalised(outcome="failed", reason=reason, verdict=verdict),
        ]
    if state.on_participant_lost == "replace":
        exclude = set(state.assigned_at) | state.participant_set
        exclude |= {state.opened_by, state.coordinator_id}  # never its own coordinator
        try:
            routing = route((ctx or EngineContext()).agents(), state.capabilities, 1, exclude)
        except errors.NotEnoughAgents:
            if cmd.retry:  # asked again after a new candidate: still nobody, nothing to say
                raise errors.NoChange(f"still no replacement online for {cmd.agent_id}") from None
            return [msgspec.structs.replace(lost, reason=f"{cmd.reason}; no replacement online")]
        return [
            msgspec.structs.replace(lost, action="replaced"),
            ParticipantReplaced(
                replaced=cmd.agent_id,
                replacement=routing.chosen[0],
                reason=cmd.reason,
                routing=routing,
                assigned_at=now,
            ),
        ]
    return [lost]


def decide_accept_task(
    state: SessionState,
    cmd: AcceptTask,
    actor: str,
    now: datetime,
    ctx: EngineContext | None = None,
) -> list[msgspec.Struct]:
    """``task.accept`` of a session: a participant acknowledges its task once; again, or
    after submitting, records nothing."""
    state.check_exists()
    state.check_is_participant(actor)
    state.check_is_open(now)
    if actor in state.accepted or actor in state.results:
        return []
    return [TaskAccepted(agent_id=actor, accepted_at=now)]
