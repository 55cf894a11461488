"""The dispatcher: a process manager that hands work to agents and keeps it moving.

It follows the log like the other process managers (engine/policies/follower.py) and acts:

- **Assign.** Each workflow's next phase goes to the most reliable online agent with the
  phase's capabilities and a free slot (engine/domain/dispatch_rules.py), as the engine-only
  ``workflow.assign_phase``; the workflow records ``PhaseAssigned`` with the ranking. When
  nobody qualifies it records ``PhaseWaiting`` once (``/workflow-status`` shows
  ``waiting_for_agent``) and tries again every round, so the phase goes out as soon as a
  qualified agent registers, comes online or frees a slot. Waiting work goes by priority,
  then age, with aging. Delegated phases are started as ``system`` (the delegation
  manager opens their sessions).
- **Leases.** A live attempt not accepted in time, past its lease, silent for longer than
  its heartbeat, or whose agent went offline or retired is ended with
  ``workflow.expire_lease`` (the workflow checks the timing against its own clock); the
  workflow then waits for the backoff and the next attempt goes to another agent, or the
  phase fails when no attempt is left. The lost lease is recorded against the agent.
- **Delivery.** Task messages go to ``chorus.task.<agent_id>`` (core NATS): a new
  assignment at once, then again after the re-send wait, twice that, and so on up to
  ``redeliver_max_seconds`` between sends, until the agent acknowledges it (a backoff, as
  JetStream's redeliveries have: an agent that never acknowledges costs a message every
  half minute, not every second). The wait is ``redeliver_seconds``, or longer while
  acknowledgements take longer: the round trip from a phase task's first send to its
  acknowledgement in the log is smoothed as TCP's retransmission timer smooths it (RFC
  6298: mean plus four mean deviations), so a busy engine, whose agents' reports wait in
  its queue, is not sent every task again; all of an agent's open tasks again, at once and with the
  backoff restarted, when it comes back online; session participants
  (named, routed, replacements) get session tasks the same way; a cancel when the work is
  cancelled, moved or closed without them.

Exactly once in effect: every command id is derived from what it reacts to
(``assign:<wid>/<phase>:<attempt>``, ``lease:<...>:<attempt>``, ...), and the workflow
allows one live attempt per phase, so a restarted or second dispatcher re-sends only
duplicates or refused commands: no phase is assigned twice at once. The assignment is
recorded before anything is sent, so a crash loses no task: the next dispatcher goes on
from its checkpoint (engine/policies/checkpoint.py: its state and position, saved between rounds),
re-reads the log after it and delivers every open one. A workflow's or session's entries
are dropped when it ends.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from chorus.aio import in_thread
from chorus.contracts.agents import RecordLeaseLost
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.errors import NOT_DUE, STORE_UNAVAILABLE
from chorus.contracts.feed import EventRecord
from chorus.contracts.subjects import is_token, task_subject
from chorus.contracts.tasks import TASK_ENCODER, CancelTask, PhaseTask, SessionTask, phase_task_id
from chorus.contracts.workflow_types import Phase
from chorus.contracts.workflows import AssignPhase, AwaitAgent, ExpireLease, StartPhase
from chorus.engine.domain.dispatch_rules import Waiting, choose_agent, in_order
from chorus.engine.domain.workflow import SYSTEM, LiveAttempt
from chorus.engine.handlers import HANDLERS
from chorus.engine.policies.delegation import delegated_session_id
from chorus.engine.policies.directory import AgentDirectory
from chorus.engine.policies.follower import LogFollower
from chorus.engine.policies.logtail import LogReader
from chorus.engine.ports import CommandSink
from chorus.engine.processor import Clock, Command, utc_now
from chorus.events.agent import AgentRegistered
from chorus.events.agent_status import ONLINE, status_set_by
from chorus.events.codec import topic_of
from chorus.events.session import (
    ParticipantReplaced,
    ResultSubmitted,
    SessionCancelled,
    SessionFinalised,
    SessionOpened,
    SessionTimedOut,
)
from chorus.events.session import TaskAccepted as SessionTaskAccepted
from chorus.events.tasks import phase_task, phase_task_of, session_task
from chorus.events.workflow import (
    PartialResultRecorded,
    PhaseAssigned,
    PhaseCompleted,
    PhaseFailed,
    PhaseLeaseExpired,
    PhaseProgressReported,
    PhaseStarted,
    PhaseWaiting,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from chorus.events.workflow import TaskAccepted as WorkflowTaskAccepted
from eventsourcing.persistence import ApplicationRecorder
from nats.aio.client import Client as NATS

log = logging.getLogger(__name__)
#: Due before any time: a task to look at in the next round.
_EARLIEST = datetime.min.replace(tzinfo=UTC)

WORKFLOW_TOPICS = (
    "WorkflowStarted", "PhaseAssigned", "PhaseWaiting", "TaskAccepted", "PhaseLeaseExpired",
    "PhaseStarted", "PhaseProgressReported", "PartialResultRecorded", "PhaseCompleted",
    "PhaseFailed", "WorkflowCompleted", "WorkflowFailed", "WorkflowCancelled",
)  # fmt: skip
SESSION_TOPICS = (
    "SessionOpened", "ParticipantReplaced", "TaskAccepted", "ResultSubmitted",
    "SessionFinalised", "SessionTimedOut", "SessionCancelled",
)  # fmt: skip
AGENT_TOPICS = (
    "AgentRegistered", "AgentCameOnline", "AgentWentOffline", "AgentRetired",
    "AgentCapabilitiesUpdated", "AgentConcurrencyChanged",
)  # fmt: skip
TOPICS = (
    [topic_of("workflow", t) for t in WORKFLOW_TOPICS]
    + [topic_of("session", t) for t in SESSION_TOPICS]
    + [topic_of("agent", t) for t in AGENT_TOPICS]
)


@dataclass
class DispatchConfig:
    #: Re-send an unacknowledged task after this long (seconds, by the engine's clock),
    #: doubling the wait after each send up to ``redeliver_max_seconds``.
    redeliver_seconds: float = 1.0
    redeliver_max_seconds: float = 30.0
    #: Every this many seconds of waiting lifts a phase one priority level.
    aging_seconds: float = 60.0


@dataclass
class _Workflow:
    started: WorkflowStarted
    phases: list[Phase]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Next:
    """The next phase of a workflow, not assigned yet."""

    phase: Phase
    attempt: int
    since: datetime
    position: int
    ready_at: datetime | None = None
    waiting: list[str] | None = None  # recorded PhaseWaiting capabilities
    lost: set[str] = field(default_factory=set)  # agents that lost this phase's lease
    sent: bool = False  # a command is in flight


@dataclass
class _Live:
    attempt: LiveAttempt
    message: bytes
    offline: bool = False
    expiring: bool = False
    last_sent: datetime | None = None
    sends: int = 0
    #: This dispatcher's first send: the acknowledgement's round trip is timed from it.
    first_sent: datetime | None = None


@dataclass
class _Session:
    """An open session's delivery state (its task message is built once, at opening: the
    ``SessionOpened`` event itself is not kept, so checkpoints stay small)."""

    workflow_id: str | None
    phase: str | None
    priority: str
    inputs: dict[str, dict[str, Any]]
    #: participant -> [acknowledged, last sent, sends]
    pending: dict[str, list[Any]] = field(default_factory=dict)
    message: bytes = b""


class Dispatcher(LogFollower):
    topics = TOPICS
    checkpoint_fields = (
        "_workflows", "_next", "_live", "_busy", "_delegate", "_sessions", "_of_session",
        "_agent_names", "_back_online", "_lease_lost", "_caught_up", "_lost", "_since",
    )  # fmt: skip
    checkpoint_modules = (
        "chorus.engine.domain.workflow",
        "chorus.contracts.workflow_types",
        "chorus.contracts.agents",
        "chorus.events.workflow",
        "chorus.events.session",
    )

    def __init__(
        self,
        recorder: ApplicationRecorder,
        worker: CommandSink,
        nc: NATS,
        clock: Clock = utc_now,
        config: DispatchConfig | None = None,
        *,
        idle: float = 0.1,
        checkpoint_every: float = 1.0,
        log: LogReader | None = None,
    ) -> None:
        super().__init__(recorder, worker, idle=idle, checkpoint_every=checkpoint_every, log=log)
        self.nc = nc
        self.clock = clock
        self.config = config or DispatchConfig()
        self.directory = AgentDirectory(recorder)
        self._workflows: dict[str, _Workflow] = {}
        self._next: dict[str, _Next] = {}
        self._live: dict[str, _Live] = {}  # workflow id -> its live attempt
        self._busy: dict[str, set[str]] = {}  # agent -> workflows it holds an attempt of
        self._delegate: set[str] = set()  # workflows whose next phase is delegated
        self._sessions: dict[str, _Session] = {}
        self._of_session: dict[str, tuple[str, str]] = {}  # delegated sid -> (wid, phase)
        self._agent_names: dict[str, str] = {}  # agent aggregate id -> agent id
        self._back_online: set[str] = set()
        #: Open tasks by when they fall due: (due, order, sends, workflow or session id,
        #: participant or "" for a phase task). An item whose task was sent since, or
        #: acknowledged, or closed, is stale and skipped. None: rebuilt by a walk over
        #: every open task next round (after a restart, or agents back online).
        self._due: list[tuple[datetime, int, int, str, str]] | None = None
        self._order = itertools.count()
        self._cancels: list[tuple[str, CancelTask]] = []
        self._outbox: list[tuple[str, bytes]] = []
        self._lease_lost: list[RecordLeaseLost] = []
        self._caught_up = False  # cancels seen while re-reading history are not re-sent
        self._lost: dict[str, set[str]] = {}  # workflow -> agents that lost its next phase
        self._since: dict[str, datetime] = {}  # workflow -> when its next phase got ready
        #: The smoothed round trip from a phase task's first send to its acknowledgement
        #: seen in the log, and its mean deviation (seconds); None before the first. Not in
        #: the checkpoint: a restarted dispatcher measures afresh.
        self._rtt: tuple[float, float] | None = None
        self.assigned = 0
        self.delivered = 0
        #: Called with (agent id, task message) after each delivery (benches, tests).
        self.on_delivered: Callable[[str, bytes], None] | None = None

    # Following the log ------------------------------------------------------------------

    def observe(self, record: EventRecord) -> None:
        match record.aggregate:
            case "workflow":
                self._observe_workflow(record)
            case "session":
                self._observe_session(record)
            case "agent":
                self._observe_agent(record)

    def _observe_workflow(self, record: EventRecord) -> None:
        wid, event = record.aggregate_id, record.event
        workflow = self._workflows.get(wid)
        if isinstance(event, WorkflowStarted):
            phases = list(event.phases)
            self._workflows[wid] = _Workflow(started=event, phases=phases)
            self._ready(wid, phases[0], 1, record)
            return
        if workflow is None:
            return
        match event:
            case PhaseAssigned():
                self._next.pop(wid, None)
                attempt = LiveAttempt(
                    phase=event.phase, number=event.attempt, agent_id=event.agent_id,
                    assigned_at=event.assigned_at, accept_by=event.accept_by,
                    lease_expires_at=event.lease_expires_at,
                    heartbeat_seconds=event.heartbeat_seconds,
                )  # fmt: skip
                task = phase_task(wid, workflow.started, workflow.results, event)
                previous = self._live.get(wid)
                fresh = _Live(attempt, TASK_ENCODER.encode(task))
                if previous is not None and previous.attempt.number == attempt.number:
                    # Delivered from the reply already.
                    fresh.last_sent, fresh.sends = previous.last_sent, previous.sends
                    fresh.first_sent = previous.first_sent
                self._live[wid] = fresh
                self._check_soon(wid, "", fresh.sends)
                self._busy.setdefault(attempt.agent_id, set()).add(wid)
            case PhaseWaiting():
                waiting = self._next.get(wid)
                if waiting is not None:
                    waiting.waiting = list(event.capabilities)
            case WorkflowTaskAccepted():
                live: _Live | None = self._live.get(wid)
                if live is not None and live.attempt.number == event.attempt:
                    self._acknowledged(live)
                    live.attempt.accepted = True
                    live.attempt.last_activity = event.accepted_at
            case PhaseStarted():
                live = self._live.get(wid)
                if live is not None and live.attempt.agent_id == event.assignee:
                    self._acknowledged(live)
                    live.attempt.accepted = True
                    return
                # Started by hand, or a delegated phase: not the dispatcher's to assign.
                self._next.pop(wid, None)
                self._delegate.discard(wid)
                if event.assignee == SYSTEM:
                    sid = delegated_session_id(wid, event.phase)
                    self._of_session[sid] = (wid, event.phase)
            case PhaseProgressReported() | PartialResultRecorded():
                live = self._live.get(wid)
                if live is not None and event.reported_at:
                    live.attempt.last_activity = event.reported_at
            case PhaseLeaseExpired():
                self._lease_expired(wid, workflow, record, event)
            case PhaseCompleted():
                workflow.results[event.phase] = event.result
                self._release(wid)
                names = [p.name for p in workflow.phases]
                index = names.index(event.phase) + 1
                if index < len(names):
                    self._ready(wid, workflow.phases[index], 1, record)
            case WorkflowCancelled():
                live = self._release(wid)
                if live is not None:
                    attempt = live.attempt
                    self._cancel(attempt.agent_id, phase_task_id(wid, attempt.phase),
                                 attempt.number, f"workflow cancelled: {event.reason}")  # fmt: skip
                self._forget(wid)
            case PhaseFailed() | WorkflowCompleted() | WorkflowFailed():
                self._release(wid)
                self._forget(wid)

    def _acknowledged(self, live: _Live) -> None:
        """Time the first acknowledgement of a task this dispatcher sent (RFC 6298's
        smoothing: gains 1/8 and 1/4). Timed from the first send even when it was sent
        again: under load that is the round trip that matters, and a lost first message
        only lengthens one sample."""
        if live.attempt.accepted or live.first_sent is None:
            return
        cap = self.config.redeliver_max_seconds
        sample = min(cap, max(0.0, (self.clock() - live.first_sent).total_seconds()))
        if self._rtt is None:
            self._rtt = (sample, sample / 2)
            return
        mean, deviation = self._rtt
        self._rtt = (mean + (sample - mean) / 8, deviation + (abs(sample - mean) - deviation) / 4)

    def _ready(self, wid: str, phase: Phase, attempt: int, record: EventRecord) -> None:
        self._lost.pop(wid, None)
        self._since[wid] = record.occurred_at
        if phase.delegate is not None:
            self._delegate.add(wid)
            return
        self._next[wid] = _Next(phase, attempt, record.occurred_at, record.position)

    def _lease_expired(
        self, wid: str, workflow: _Workflow, record: EventRecord, event: PhaseLeaseExpired
    ) -> None:
        self._release(wid)
        reason = event.reason
        task_id = phase_task_id(wid, event.phase)
        self._cancel(event.agent_id, task_id, event.attempt, f"lease lost: {reason}")
        if reason != "reassigned":
            self._lease_lost.append(
                RecordLeaseLost(
                    agent_id=event.agent_id,
                    task_id=task_id,
                    attempt=event.attempt,
                    reason=reason,
                )
            )
        if event.retry_at is None:
            return  # failed for good, or taken back by hand
        phase = next(p for p in workflow.phases if p.name == event.phase)
        lost = self._lost.setdefault(wid, set())
        lost.add(event.agent_id)
        since = self._since.get(wid, record.occurred_at)
        self._next[wid] = _Next(
            phase, event.attempt + 1, since, record.position,
            ready_at=event.retry_at, lost=set(lost),
        )  # fmt: skip

    def _release(self, wid: str) -> _Live | None:
        live = self._live.pop(wid, None)
        if live is not None:
            held = self._busy.get(live.attempt.agent_id)
            if held is not None:
                held.discard(wid)
                if not held:
                    del self._busy[live.attempt.agent_id]
        return live

    def _forget(self, wid: str) -> None:
        workflow = self._workflows.pop(wid, None)
        for phase in workflow.phases if workflow and self._of_session else ():
            self._of_session.pop(delegated_session_id(wid, phase.name), None)
        self._next.pop(wid, None)
        self._delegate.discard(wid)
        self._lost.pop(wid, None)
        self._since.pop(wid, None)

    def _cancel(self, agent: str, task_id: str, attempt: int | None, reason: str) -> None:
        """Tell the holder to stop (once, and only for what happens from now on)."""
        if self._caught_up:
            self._cancels.append(
                (agent, CancelTask(task_id=task_id, reason=reason, attempt=attempt))
            )

    def _observe_session(self, record: EventRecord) -> None:
        sid, event = record.aggregate_id, record.event
        if isinstance(event, SessionOpened):
            wid, phase = self._of_session.pop(sid, (None, None))
            workflow = self._workflows.get(wid) if wid else None
            priority = workflow.started.priority if workflow else "normal"
            inputs = dict(workflow.results) if workflow else {}
            session = _Session(wid, phase, priority, inputs)
            session.message = TASK_ENCODER.encode(
                session_task(sid, event, priority, wid, phase, inputs)
            )
            session.pending = {p: [False, None, 0] for p in event.participants}
            self._sessions[sid] = session
            for agent in session.pending:
                self._check_soon(sid, agent, 0)
            return
        known = self._sessions.get(sid)
        if known is None:
            return
        session = known
        match event:
            case ParticipantReplaced():
                if session.pending.pop(event.replaced, None) is not None:
                    self._cancel(event.replaced, sid, None, f"replaced: {event.reason}")
                session.pending[event.replacement] = [False, None, 0]
                self._check_soon(sid, event.replacement, 0)
            case SessionTaskAccepted():
                if event.agent_id in session.pending:
                    session.pending[event.agent_id][0] = True
            case ResultSubmitted():
                session.pending.pop(event.agent_id, None)
            case SessionFinalised() | SessionTimedOut() | SessionCancelled():
                del self._sessions[sid]
                if not isinstance(event, SessionFinalised):
                    reason = "session cancelled" if isinstance(event, SessionCancelled) else (
                        "session timed out")  # fmt: skip
                    for agent in session.pending:
                        self._cancel(agent, sid, None, reason)

    def _observe_agent(self, record: EventRecord) -> None:
        event = record.event
        if isinstance(event, AgentRegistered):
            self._agent_names[record.aggregate_id] = event.agent_id
        name = self._agent_names.get(record.aggregate_id)
        if name is None:
            return
        status = status_set_by(event)
        if status == ONLINE:
            self._back_online.add(name)
            self._mark(name, offline=False)
        elif status is not None:
            self._back_online.discard(name)
            self._mark(name, offline=True)

    def _mark(self, agent: str, *, offline: bool) -> None:
        for wid in self._busy.get(agent, ()):
            live = self._live.get(wid)  # a slot may be held for an assignment in flight
            if live is not None:
                live.offline = offline

    # Acting -----------------------------------------------------------------------------

    async def act(self) -> None:
        if not self._caught_up:
            self._caught_up = True
            self._back_online.clear()  # every open task goes out below anyway
        now = self.clock()
        await self._expire_due(now)
        await self._record_lease_lost()
        await self._start_delegated()
        await self._assign_ready(now)
        await self._flush()  # new assignments first: they are what latency is measured on
        await self._deliver(now)
        await self._flush()

    async def _expire_due(self, now: datetime) -> None:
        due: list[tuple[str, _Live, str]] = []
        for wid, live in self._live.items():
            if live.expiring:
                continue
            reason = "agent_offline" if live.offline else live.attempt.due(now)
            if reason is not None:
                due.append((wid, live, reason))
        if not due:
            return
        for _, live, _ in due:
            live.expiring = True
        replies = await asyncio.gather(*(self._send(
            "workflow", "expire_lease",
            f"lease:{phase_task_id(wid, live.attempt.phase)}:{live.attempt.number}",
            ExpireLease(workflow_id=wid, phase=live.attempt.phase, attempt=live.attempt.number,
                        reason=reason),  # type: ignore[arg-type]
            wid) for wid, live, reason in due))  # fmt: skip
        for (wid, live, _), reply in zip(due, replies, strict=True):
            if reply.status == "rejected":
                live.expiring = False  # not due by the workflow's clock yet, or a retry
                self._check_soon(wid, "", live.sends)

    async def _record_lease_lost(self) -> None:
        while self._lease_lost:
            cmd = self._lease_lost[0]
            reply = await self._send(
                "agent", "lease_lost", f"lease-lost:{cmd.task_id}:{cmd.attempt}", cmd,
                cmd.task_id.partition("/")[0],
            )  # fmt: skip
            if _retryable(reply):
                return
            self._lease_lost.pop(0)

    async def _start_delegated(self) -> None:
        for wid in list(self._delegate):
            workflow = self._workflows[wid]
            done = len(workflow.results)
            if done >= len(workflow.phases):
                self._delegate.discard(wid)
                continue
            phase = workflow.phases[done].name
            reply = await self._send(
                "workflow", "start_phase", f"dispatch-start:{wid}/{phase}",
                StartPhase(workflow_id=wid, phase=phase), wid,
            )  # fmt: skip
            if not _retryable(reply):
                self._delegate.discard(wid)

    async def _assign_ready(self, now: datetime) -> None:
        ready = [
            Waiting(wid, self._workflows[wid].started.priority, item.since, item.position)
            for wid, item in self._next.items()
            if not item.sent and (item.ready_at is None or item.ready_at <= now)
        ]
        if not ready:
            return
        agents = list(await in_thread(lambda: list(self.directory.catch_up().values())))
        busy = {agent: len(wids) for agent, wids in self._busy.items()}
        sends: list[tuple[str, _Next, str | None, Any]] = []
        for item in in_order(ready, now, self.config.aging_seconds):
            wid = item.workflow_id
            nxt = self._next[wid]
            routing = choose_agent(agents, nxt.phase.capabilities, busy, nxt.lost)
            if routing is None:
                caps = sorted(nxt.phase.capabilities)
                if nxt.waiting != caps:
                    nxt.sent = True
                    sends.append((wid, nxt, None, self._send(
                        "workflow", "await_agent", f"wait:{wid}/{nxt.phase.name}:{nxt.attempt}",
                        AwaitAgent(workflow_id=wid, phase=nxt.phase.name, attempt=nxt.attempt,
                                   capabilities=caps), wid)))  # fmt: skip
                continue
            agent = routing.chosen[0]
            busy[agent] = busy.get(agent, 0) + 1
            self._busy.setdefault(agent, set()).add(wid)  # held until the log says otherwise
            nxt.sent = True
            sends.append((wid, nxt, agent, self._send(
                "workflow", "assign_phase", f"assign:{wid}/{nxt.phase.name}:{nxt.attempt}",
                AssignPhase(workflow_id=wid, phase=nxt.phase.name, attempt=nxt.attempt,
                            agent_id=agent, routing=msgspec.to_builtins(routing)), wid)))  # fmt: skip
        replies = await asyncio.gather(*(send for *_, send in sends))
        for (wid, nxt, chosen, _), reply in zip(sends, replies, strict=True):
            self._after_assign(wid, nxt, chosen, reply, now)

    def _after_assign(
        self, wid: str, nxt: _Next, agent: str | None, reply: Reply, now: datetime
    ) -> None:
        if agent is None:  # a PhaseWaiting
            nxt.sent = False
            if reply.status != "rejected" or not _retryable(reply):
                nxt.waiting = sorted(nxt.phase.capabilities)
            return
        if reply.status == "accepted" and wid not in self._live:
            # Deliver now, not after the log round trip: the lease in this first message
            # is the dispatcher's estimate; redeliveries carry the recorded one.
            workflow = self._workflows[wid]
            lease = now.timestamp() + nxt.phase.lease_seconds
            task = phase_task_of(
                wid, workflow.started, workflow.results, phase=nxt.phase.name,
                attempt=nxt.attempt, lease_expires_at=datetime.fromtimestamp(lease, now.tzinfo),
                heartbeat_seconds=nxt.phase.heartbeat_seconds,
            )  # fmt: skip
            message = TASK_ENCODER.encode(task)
            self.assigned += 1
            self._publish_soon(agent, message)
            attempt = LiveAttempt(
                phase=nxt.phase.name, number=nxt.attempt, agent_id=agent, assigned_at=now,
                accept_by=datetime.max.replace(tzinfo=now.tzinfo),
                lease_expires_at=datetime.max.replace(tzinfo=now.tzinfo), heartbeat_seconds=None,
            )  # fmt: skip
            self._live[wid] = _Live(attempt, message, last_sent=now, sends=1,
                                    first_sent=now)  # until the log's  # fmt: skip
            self._check_soon(wid, "", 1)
            return
        if reply.status == "accepted" or reply.status == "duplicate":
            return  # the log has it (or will): observe() takes over
        held = self._busy.get(agent)
        if held is not None and self._live.get(wid) is None:
            held.discard(wid)
            if not held:
                del self._busy[agent]
        if _retryable(reply) or (reply.error is not None and reply.error.code == NOT_DUE):
            nxt.sent = False  # try again next round
        # Anything else (the phase moved on, was started by hand): the log will tell.

    async def _deliver(self, now: datetime) -> None:
        """Send what is due: new and unacknowledged tasks (with the backoff), and every open
        task of an agent back online. Only the due items of ``_due`` are looked at: a round
        after each commit costs what it sends, not one step per open task."""
        back, self._back_online = self._back_online, set()
        cancels, self._cancels = self._cancels, []
        for agent, cancel in cancels:
            self._publish_soon(agent, TASK_ENCODER.encode(cancel))
        if self._due is None or back:
            self._due = []
            for wid, live in self._live.items():
                self._visit_live(wid, live, back, now)
            for sid, session in self._sessions.items():
                for agent in session.pending:
                    self._visit_session(sid, session, agent, back, now)
            return
        while self._due and self._due[0][0] <= now:
            _, _, sends, key, agent = heapq.heappop(self._due)
            if not agent:
                open_live = self._live.get(key)
                if open_live is not None and open_live.sends == sends:
                    self._visit_live(key, open_live, back, now)
                continue
            open_session = self._sessions.get(key)
            state = open_session.pending.get(agent) if open_session is not None else None
            if open_session is not None and state is not None and state[2] == sends:
                self._visit_session(key, open_session, agent, back, now)

    def _visit_live(self, wid: str, live: _Live, back: set[str], now: datetime) -> None:
        if live.expiring:
            return  # its lease is being ended: a cancel follows, not the task again
        attempt = live.attempt
        if live.sends == 0:
            live.first_sent = now
        live.last_sent, live.sends = self._visit(
            wid, "", attempt.agent_id, live.message, attempt.accepted, live.last_sent,
            live.sends, back, now,
        )  # fmt: skip

    def _visit_session(
        self, sid: str, session: _Session, agent: str, back: set[str], now: datetime
    ) -> None:
        state = session.pending[agent]
        state[1], state[2] = self._visit(sid, agent, agent, session.message, state[0], state[1],
                                         state[2], back, now)  # fmt: skip

    def _visit(
        self, key: str, participant: str, agent: str, message: bytes, acknowledged: bool,
        last_sent: datetime | None, sends: int, back: set[str], now: datetime,
    ) -> tuple[datetime | None, int]:  # fmt: skip
        """Send one open task if it is due (or its agent is back), schedule its next send;
        returns its (last sent, sends)."""
        if agent in back:
            sends = 0
        elif acknowledged:
            return last_sent, sends
        if sends > 0 and last_sent is not None:
            due = last_sent + self._wait(sends)
            if now < due:
                self._schedule(due, sends, key, participant)
                return last_sent, sends
        self._publish_soon(agent, message)
        if not acknowledged:
            self._schedule(now + self._wait(sends + 1), sends + 1, key, participant)
        return now, sends + 1

    def _schedule(self, due: datetime, sends: int, key: str, participant: str) -> None:
        if self._due is not None:
            heapq.heappush(self._due, (due, next(self._order), sends, key, participant))

    def _check_soon(self, key: str, participant: str, sends: int) -> None:
        """A task is new or changed: look at it next round (nothing is sent before due)."""
        self._schedule(_EARLIEST, sends, key, participant)

    def _wait(self, sends: int) -> timedelta:
        """How long after its last send a task sent ``sends`` times goes out again: the
        re-send wait (``redeliver_wait``), doubled per send, capped."""
        seconds = self.redeliver_wait() * 2 ** min(sends - 1, 32)  # no overflow
        return timedelta(seconds=min(seconds, self.config.redeliver_max_seconds))

    def redeliver_wait(self) -> float:
        """Seconds before an unacknowledged task's first re-send: ``redeliver_seconds``, or
        the acknowledgements' smoothed round trip plus four mean deviations if longer."""
        if self._rtt is None:
            return self.config.redeliver_seconds
        mean, deviation = self._rtt
        return max(self.config.redeliver_seconds, mean + 4 * deviation)

    def _publish_soon(self, agent: str, message: bytes) -> None:
        """Queue a delivery for the end of this round (``_flush``)."""
        if is_token(agent):
            self._outbox.append((agent, message))

    async def _flush(self) -> None:
        """Core NATS publishes (the client buffers them): no JetStream, no ack to wait for.
        What fails here is still open and goes out again next round."""
        outbox, self._outbox = self._outbox, []
        for agent, message in outbox:
            try:
                await self.nc.publish(task_subject(agent), message)
            except Exception as error:
                log.warning("task delivery to %s failed: %s", agent, error)
                continue
            self.delivered += 1
            if self.on_delivered is not None:
                self.on_delivered(agent, message)

    async def _send(
        self, aggregate: str, name: str, command_id: str, payload: Any, correlation: str
    ) -> Reply:
        return await self.worker.submit(
            Command(
                actor=SYSTEM,
                handler=HANDLERS[(aggregate, name)],
                envelope=Envelope(
                    command_id=command_id, payload=payload, correlation_id=correlation
                ),
            )
        )

    # Reading -----------------------------------------------------------------------------

    def open_tasks(self, agent: str) -> list[PhaseTask | SessionTask]:
        """The tasks ``agent`` holds now, as this dispatcher knows them (tests, debugging)."""
        decoder = msgspec.json.Decoder(PhaseTask | SessionTask)
        out = [decoder.decode(v.message) for v in self._live.values()
               if v.attempt.agent_id == agent]  # fmt: skip
        out += [decoder.decode(s.message) for s in self._sessions.values() if agent in s.pending]
        return out


def _retryable(reply: Reply) -> bool:
    return reply.error is not None and reply.error.code == STORE_UNAVAILABLE
