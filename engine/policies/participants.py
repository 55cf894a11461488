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
from chorus.engine.ports import CommandSink
from chorus.engine.processor import Command
from chorus.events.codec import topic_of
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
NEW_CANDIDATE = {"AgentRegistered", "AgentCameOnline", "AgentCapabilitiesUpdated"}
CLOSING = {"SessionFinalised", "SessionTimedOut", "SessionCancelled"}


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
    ) -> None:
        super().__init__(recorder, worker, idle=idle, checkpoint_every=checkpoint_every)
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
        data, key = record.data, record.aggregate_id
        if record.type in NEW_CANDIDATE:
            for waiting, version in self._unreplaced.items():
                self._to_report[waiting] = f"{version}:after:{record.position}"
        match record.type:
            case "AgentRegistered":
                self._name[key] = data["agent_id"]
                self._status[data["agent_id"]] = ("online", record.version)
            case "AgentCameOnline" | "AgentWentOffline" | "AgentRetired":
                agent = self._name.get(key)
                if agent is None:
                    return
                status = {"AgentCameOnline": "online", "AgentWentOffline": "offline"}.get(
                    record.type, "retired"
                )
                self._status[agent] = (status, record.version)
                if status != "online":
                    for sid in self._sessions_of.get(agent, ()):
                        self._to_report[(sid, agent)] = str(record.version)
                else:  # back: nobody needs to replace it any more
                    for sid in self._sessions_of.get(agent, ()):
                        self._unreplaced.pop((sid, agent), None)
            case "SessionOpened":
                self._pending[key] = set(data["participants"])
                if data.get("on_participant_lost") == "replace":
                    self._replacing.add(key)
                for agent in data["participants"]:
                    self._sessions_of.setdefault(agent, set()).add(key)
                    status, version = self._status.get(agent, ("unknown", 0))
                    if status in ("offline", "retired"):
                        self._to_report[(key, agent)] = str(version)
            case "ParticipantLost":
                if key in self._replacing and data["action"] == "waiting":
                    status, version = self._status.get(data["agent_id"], ("unknown", 0))
                    self._unreplaced[(key, data["agent_id"])] = version
            case "ResultSubmitted":
                self._leave(key, data["agent_id"])
            case "ParticipantReplaced":
                self._leave(key, data["replaced"])
                new = data["replacement"]
                self._pending.setdefault(key, set()).add(new)
                self._sessions_of.setdefault(new, set()).add(key)
            case closing if closing in CLOSING:
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
            if status == "online" or agent not in self._pending.get(sid, ()):
                self._to_report.pop((sid, agent), None)  # back, or no longer waited on
                continue
            reason = "agent retired" if status == "retired" else "agent went offline"
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
