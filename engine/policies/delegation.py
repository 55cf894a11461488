"""The delegation process manager: phases run as coordination sessions.

When a phase whose type has a ``delegate`` rule starts, this opens a session for it; when
that session closes, it completes the phase with the session's outcome (succeeded) or
fails it with the reason (failed, timed out, cancelled).

Exactly once in effect, across crashes: it follows the notification log, saves its to-do
list with its position (engine/policies/checkpoint.py) and goes on from there at start, and every
command it sends has an id derived from the workflow and phase (the session id too), so
anything re-sent after a restart is answered ``duplicate`` and changes nothing. What it
knows of a workflow is dropped when the workflow ends. Work waiting to be opened goes
highest priority first.
"""

from __future__ import annotations

import heapq
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
from chorus.contracts.envelope import Envelope
from chorus.contracts.errors import STORE_UNAVAILABLE
from chorus.contracts.feed import EventRecord
from chorus.contracts.sessions import CancelSession, OpenSession, Task
from chorus.contracts.workflow_types import Delegation, Phase
from chorus.contracts.workflows import CompletePhase, FailPhase, PhaseError
from chorus.engine.handlers import HANDLERS
from chorus.engine.policies.follower import LogFollower
from chorus.engine.policies.logtail import LogReader
from chorus.engine.ports import CommandSink
from chorus.engine.processor import Command
from chorus.events.codec import topic_of
from chorus.events.session import (
    SessionCancelled,
    SessionFinalised,
    SessionOpened,
    SessionTimedOut,
)
from chorus.events.workflow import (
    PhaseCompleted,
    PhaseFailed,
    PhaseStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from eventsourcing.persistence import ApplicationRecorder
from msgspec import Struct

log = logging.getLogger(__name__)

SYSTEM = "system"
DELEGATION_NAMESPACE = uuid.UUID("9a3f7c1e-2b7d-4e43-8d0e-64656c656761")
PRIORITY_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
TOPICS = [
    topic_of("workflow", t)
    for t in ("WorkflowStarted", "PhaseStarted", "PhaseCompleted", "PhaseFailed",
              "WorkflowCancelled", "WorkflowCompleted", "WorkflowFailed")
] + [
    topic_of("session", t)
    for t in ("SessionOpened", "SessionFinalised", "SessionTimedOut", "SessionCancelled")
]  # fmt: skip
CLOSED_ERRORS: dict[type[Struct], str] = {
    SessionTimedOut: "session_timed_out",
    SessionCancelled: "session_cancelled",
}
#: How a delegated phase's session closed.
Closed = SessionFinalised | SessionTimedOut | SessionCancelled


def delegated_session_id(workflow_id: str, phase: str) -> str:
    """The session of a delegated phase: derived, so it can only ever be opened once."""
    return str(uuid.uuid5(DELEGATION_NAMESPACE, f"{workflow_id}/{phase}"))


@dataclass
class _Workflow:
    workflow_type: str
    requirements: str
    priority: str
    phases: dict[str, Phase]


@dataclass(order=True)
class _ToOpen:
    rank: int
    position: int
    workflow_id: str = field(compare=False)
    phase: str = field(compare=False)


class DelegationManager(LogFollower):
    topics = TOPICS
    checkpoint_fields = (
        "_workflows", "_to_open", "_opened", "_phase_of", "_to_finish", "_done", "_to_cancel",
    )  # fmt: skip
    checkpoint_modules = ("chorus.contracts.workflow_types", "chorus.events.session")

    def __init__(
        self,
        recorder: ApplicationRecorder,
        worker: CommandSink,
        *,
        idle: float = 0.1,
        checkpoint_every: float = 1.0,
        log: LogReader | None = None,
    ) -> None:
        super().__init__(recorder, worker, idle=idle, checkpoint_every=checkpoint_every, log=log)
        self._workflows: dict[str, _Workflow] = {}
        self._to_open: list[_ToOpen] = []
        self._opened: set[str] = set()  # session ids known to exist
        self._phase_of: dict[str, tuple[str, str]] = {}  # session id -> (workflow, phase)
        self._to_finish: dict[str, Closed] = {}  # session -> how it closed
        self._done: set[tuple[str, str]] = set()  # phases finished (or workflow cancelled)
        self._to_cancel: set[str] = set()  # sessions of cancelled workflows, still open

    def observe(self, record: EventRecord) -> None:
        position = record.position
        event = record.event
        wid = record.aggregate_id
        match event:
            case WorkflowStarted():
                self._workflows[wid] = _Workflow(
                    event.workflow_type, event.requirements, event.priority,
                    {p.name: p for p in event.phases},
                )  # fmt: skip
            case PhaseStarted():
                workflow = self._workflows.get(wid)
                phase = workflow.phases.get(event.phase) if workflow else None
                if workflow is None or phase is None or phase.delegate is None:
                    return
                sid = delegated_session_id(wid, phase.name)
                self._phase_of[sid] = (wid, phase.name)
                if sid not in self._opened:
                    rank = PRIORITY_RANK.get(workflow.priority, 2)
                    heapq.heappush(self._to_open, _ToOpen(rank, position, wid, phase.name))
            case PhaseCompleted() | PhaseFailed():
                self._finished(wid, event.phase)
            case WorkflowCancelled():
                for sid, (w, p) in list(self._phase_of.items()):
                    if w == wid and (w, p) not in self._done:
                        self._finished(w, p)
                        if sid in self._opened:
                            # Nobody will use its outcome: release its agents now.
                            self._to_cancel.add(sid)
                self._forget(wid)
            case WorkflowCompleted() | WorkflowFailed():
                self._forget(wid)
            case SessionOpened():
                # Only a session the engine opened speaks for a phase: someone who guessed
                # the derived id and opened it first must not finish the phase.
                if event.opened_by == SYSTEM and record.aggregate_id in self._phase_of:
                    self._opened.add(record.aggregate_id)
            case SessionCancelled() if record.aggregate_id in self._to_cancel:
                self._cancelled(record.aggregate_id)
            case SessionFinalised() | SessionTimedOut() | SessionCancelled():
                sid = record.aggregate_id
                if sid in self._to_cancel:
                    self._cancelled(sid)
                    return
                if sid in self._opened and self._phase_of[sid] not in self._done:
                    self._to_finish[sid] = event

    def _finished(self, workflow_id: str, phase: str) -> None:
        self._done.add((workflow_id, phase))
        self._to_finish.pop(delegated_session_id(workflow_id, phase), None)

    def _forget(self, workflow_id: str) -> None:
        """The workflow ended: nothing of it is needed any more, except the sessions still
        to be cancelled (until they are)."""
        workflow = self._workflows.pop(workflow_id, None)
        if workflow is None:
            return
        for phase in workflow.phases:
            sid = delegated_session_id(workflow_id, phase)
            self._to_finish.pop(sid, None)
            if sid not in self._to_cancel:
                self._phase_of.pop(sid, None)
                self._opened.discard(sid)
                self._done.discard((workflow_id, phase))

    def _cancelled(self, sid: str) -> None:
        """A session of a cancelled workflow is closed (by us or otherwise)."""
        self._to_cancel.discard(sid)
        key = self._phase_of.get(sid)
        if key is not None and key[0] not in self._workflows:
            del self._phase_of[sid]
            self._opened.discard(sid)
            self._done.discard(key)

    def prune(self) -> None:
        """Work queued for workflows that ended leaves the heap."""
        if any(item.workflow_id not in self._workflows for item in self._to_open):
            self._to_open = [i for i in self._to_open if i.workflow_id in self._workflows]
            heapq.heapify(self._to_open)

    async def act(self) -> None:
        await self._open_due()
        await self._finish_due()
        await self._cancel_due()

    async def _open_due(self) -> None:
        while self._to_open:
            item = heapq.heappop(self._to_open)
            key = (item.workflow_id, item.phase)
            sid = delegated_session_id(*key)
            if key in self._done or sid in self._opened or key[0] not in self._workflows:
                continue
            workflow = self._workflows[item.workflow_id]
            rule = workflow.phases[item.phase].delegate
            assert rule is not None
            # Back on the heap until an answer is in: an error here must not lose it.
            heapq.heappush(self._to_open, item)
            reply = await self._send(
                self._open_command(item.workflow_id, item.phase, workflow, rule)
            )
            if reply.status == "rejected" and not _retryable(reply):
                # The rule cannot be carried out (participants invalid, or not enough
                # agents online with the capabilities): fail the phase with the reason.
                assert reply.error is not None
                reply = await self._send(self._fail(item.workflow_id, item.phase,
                                                    reply.error.code, reply.error.message))  # fmt: skip
            if _retryable(reply):
                return  # still on the heap: next round
            heapq.heappop(self._to_open)

    def _open_command(self, wid: str, phase: str, workflow: _Workflow, rule: Delegation) -> Command:
        """Named participants, or ``size`` agents with the capabilities, routed by the
        engine by reliability (``not_enough_agents`` fails the phase)."""
        description = f"{workflow.workflow_type}/{phase}: {workflow.requirements}"[:10_000]
        routed = not rule.participants
        payload = OpenSession(
            session_id=delegated_session_id(wid, phase),
            participants=[] if routed else list(rule.participants or []),
            capabilities=list(rule.capabilities or []),
            size=rule.size if routed else None,
            on_participant_lost=rule.on_participant_lost,
            task=Task(description=description, criteria=rule.criteria),
            timeout_seconds=rule.timeout_seconds,
            coordinator_id=SYSTEM,
        )
        return self._command("session", "open", f"delegate-open:{wid}/{phase}", payload, wid)

    async def _finish_due(self) -> None:
        for sid, closed in list(self._to_finish.items()):
            wid, phase = self._phase_of[sid]
            if isinstance(closed, SessionFinalised) and closed.outcome == "succeeded":
                command = self._command(
                    "workflow", "complete_phase", f"delegate-finish:{wid}/{phase}",
                    CompletePhase(workflow_id=wid, phase=phase, result={
                        "session_id": sid, "outcome": closed.outcome,
                        "verdict": msgspec.to_builtins(closed.verdict),
                    }),
                    wid,
                )  # fmt: skip
            else:
                code = CLOSED_ERRORS.get(type(closed), "session_failed")
                reason = getattr(closed, "reason", "") or "the session passed its deadline"
                command = self._fail(wid, phase, code, f"session {sid}: {reason}")
            reply = await self._send(command)
            if _retryable(reply):
                return
            self._to_finish.pop(sid, None)

    async def _cancel_due(self) -> None:
        for sid in list(self._to_cancel):
            wid, phase = self._phase_of[sid]
            command = self._command(
                "session", "cancel", f"delegate-cancel:{wid}/{phase}",
                CancelSession(session_id=sid, reason=f"workflow {wid} was cancelled"), wid,
            )  # fmt: skip
            reply = await self._send(command)
            if not _retryable(reply):
                self._cancelled(sid)

    def _fail(self, wid: str, phase: str, code: str, message: str) -> Command:
        payload = FailPhase(workflow_id=wid, phase=phase,
                            error=PhaseError(code=code, message=message[:10_000]))  # fmt: skip
        return self._command(
            "workflow", "fail_phase", f"delegate-finish:{wid}/{phase}", payload, wid
        )

    @staticmethod
    def _command(aggregate: str, name: str, command_id: str, payload: Any, wid: str) -> Command:
        return Command(
            actor=SYSTEM,
            handler=HANDLERS[(aggregate, name)],
            envelope=Envelope(command_id=command_id, payload=payload, correlation_id=wid),
        )

    async def _send(self, command: Command) -> Any:
        return await self.worker.submit(command)


def _retryable(reply: Any) -> bool:
    """Nothing was recorded and trying again may work."""
    return reply.error is not None and reply.error.code == STORE_UNAVAILABLE
