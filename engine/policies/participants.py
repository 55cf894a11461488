"""The participant watch: a session learns when a participant it waits on goes offline.

A process manager following the log. It knows each open session's pending participants
and each agent's status; when a pending participant is offline (it went offline, or it
already was when the session opened) it sends the session ``participant_lost``, and the
session's policy (wait, fail_fast, replace) decides what follows. The command id is
derived from the session, the agent and the agent's version at that moment
(``lost:<session>:<agent>:<v>``), so a restart that re-reads the log after its checkpoint
(engine/policies/checkpoint.py) re-sends only duplicates, and a participant lost, back, and lost
again is reported twice. A session's entries are dropped when it closes.

Under the ``replace`` policy a lost participant with no replacement online stays
``waiting``; when an agent later registers, comes online or gains capabilities, the watch
reports the loss again (``lost:<session>:<agent>:<v>:after:<position>``), and the session
takes the replacement if one now qualifies (and records nothing if none does).
"""

from __future__ import annotations

import logging

from chorus.contracts.envelope import Envelope
from chorus.contracts.errors import STORE_UNAVAILABLE
from chorus.contracts.feed import EventRecord
from chorus.contracts.sessions import ReportParticipantLost
from chorus.engine.handlers import HANDLERS
from chorus.engine.policies.follower import LogFollower
from chorus.engine.policies.logtail import LogReader
from chorus.engine.ports import CommandSink
from chorus.engine.processor import Command
from chorus.events.agent import AgentCameOnline, AgentCapabilitiesUpdated, AgentRegistered
from chorus.events.agent_status import OFFLINE, ONLINE, RETIRED, status_set_by
from chorus.events.codec import topic_of
from chorus.events.session import ParticipantLost as LossRecorded
from chorus.events.session import (
    ParticipantReplaced,
    ResultSubmitted,
    SessionCancelled,
    SessionFinalised,
    SessionOpened,
    SessionTimedOut,
)
from eventsourcing.persistence import ApplicationRecorder

log = logging.getLogger(__name__)

TOPICS = [
    topic_of("session", t)
    for t in ("SessionOpened", "ResultSubmitted", "ParticipantLost", "ParticipantReplaced",
              "SessionFinalised", "SessionTimedOut", "SessionCancelled")
] + [
    topic_of("agent", t)
    for t in ("AgentRegistered", "AgentCameOnline", "AgentWentOffline", "AgentRetired",
              "AgentCapabilitiesUpdated")
]  # fmt: skip
#: Agent events after which a waiting replacement may now be found.
NEW_CANDIDATE = (AgentRegistered, AgentCameOnline, AgentCapabilitiesUpdated)


class ParticipantWatch(LogFollower):
    topics = TOPICS
    checkpoint_fields = (
        "_pending", "_sessions_of", "_name", "_status", "_to_report", "_replacing",
        "_unreplaced",
    )  # fmt: skip

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
        self._pending: dict[str, set[str]] = {}  # session -> participants yet to submit
        self._sessions_of: dict[str, set[str]] = {}  # agent -> open sessions waiting on it
        self._name: dict[str, str] = {}  # agent aggregate id -> agent id
        self._status: dict[str, tuple[str, int]] = {}  # agent id -> (status, version)
        #: (session, agent) -> the command id's suffix (agent version, and for a retry the
        #: position of the event that made a replacement possible)
        self._to_report: dict[tuple[str, str], str] = {}
        self._replacing: set[str] = set()  # sessions under the replace policy
        self._unreplaced: dict[tuple[str, str], int] = {}  # lost, waiting: agent version
        self.reported = 0

    def observe(self, record: EventRecord) -> None:
        event, key = record.event, record.aggregate_id
        if isinstance(event, NEW_CANDIDATE):
            for waiting, version in self._unreplaced.items():
                self._to_report[waiting] = f"{version}:after:{record.position}"
        if isinstance(event, AgentRegistered):
            self._name[key] = event.agent_id
        if (status := status_set_by(event)) is not None:
            agent = self._name.get(key)
            if agent is None:
                return
            self._status[agent] = (status, record.version)
            if isinstance(event, AgentRegistered):
                return
            if status != ONLINE:
                for sid in self._sessions_of.get(agent, ()):
                    self._to_report[(sid, agent)] = str(record.version)
            else:  # back: nobody needs to replace it any more
                for sid in self._sessions_of.get(agent, ()):
                    self._unreplaced.pop((sid, agent), None)
            return
        match event:
            case SessionOpened():
                self._pending[key] = set(event.participants)
                if event.on_participant_lost == "replace":
                    self._replacing.add(key)
                for agent in event.participants:
                    self._sessions_of.setdefault(agent, set()).add(key)
                    status, version = self._status.get(agent, ("unknown", 0))
                    if status in (OFFLINE, RETIRED):
                        self._to_report[(key, agent)] = str(version)
            case LossRecorded():
                if key in self._replacing and event.action == "waiting":
                    status, version = self._status.get(event.agent_id, ("unknown", 0))
                    self._unreplaced[(key, event.agent_id)] = version
            case ResultSubmitted():
                self._leave(key, event.agent_id)
            case ParticipantReplaced():
                self._leave(key, event.replaced)
                new = event.replacement
                self._pending.setdefault(key, set()).add(new)
                self._sessions_of.setdefault(new, set()).add(key)
            case SessionFinalised() | SessionTimedOut() | SessionCancelled():
                for agent in self._pending.pop(key, set()):
                    self._leave(key, agent)
                self._replacing.discard(key)

    def _leave(self, sid: str, agent: str) -> None:
        self._pending.get(sid, set()).discard(agent)
        sessions = self._sessions_of.get(agent)
        if sessions is not None:
            sessions.discard(sid)
            if not sessions:
                del self._sessions_of[agent]
        self._to_report.pop((sid, agent), None)
        self._unreplaced.pop((sid, agent), None)

    async def act(self) -> None:
        """Report every pending participant that is (still) offline or retired."""
        handler = HANDLERS[("session", "participant_lost")]
        for (sid, agent), suffix in list(self._to_report.items()):
            status, _ = self._status.get(agent, ("unknown", 0))
            if status == ONLINE or agent not in self._pending.get(sid, ()):
                self._to_report.pop((sid, agent), None)  # back, or no longer waited on
                continue
            reason = "agent retired" if status == RETIRED else "agent went offline"
            reply = await self.worker.submit(
                Command(
                    actor="system",
                    handler=handler,
                    envelope=Envelope(
                        command_id=f"lost:{sid}:{agent}:{suffix}",
                        payload=ReportParticipantLost(
                            session_id=sid, agent_id=agent, reason=reason, retry=":after:" in suffix
                        ),
                        correlation_id=sid,
                    ),
                )
            )
            if reply.error is not None and reply.error.code == STORE_UNAVAILABLE:
                return  # nothing recorded: next round
            self._to_report.pop((sid, agent), None)
            if reply.status == "accepted":
                self.reported += 1
