"""The agents as this engine last read them from the log: for routing and liveness.

Folds only the agent topics of the notification log into ``AgentState``s, so a catch-up
when nothing changed is one small query. The processor catches up before each routing
decision; the liveness monitor before each sweep. The agents and the position are saved
in a checkpoint (engine/policies/checkpoint.py), shared by every directory on the same store, so a
start reads only the agent events recorded since.
"""

from __future__ import annotations

from uuid import UUID

from chorus.engine.domain.agent import AgentState
from chorus.engine.policies.checkpoint import CheckpointedFold
from chorus.events.agent import AGENT_EVENTS
from chorus.events.codec import decode_record, topic_of, typed_event
from eventsourcing.persistence import ApplicationRecorder, Notification

TOPICS = [topic_of("agent", name) for name in AGENT_EVENTS]


class AgentDirectory(CheckpointedFold):
    def __init__(self, recorder: ApplicationRecorder, *, checkpoint_every: float = 1.0) -> None:
        self.by_id: dict[str, AgentState] = {}
        self._by_uuid: dict[UUID, AgentState] = {}
        super().__init__(
            recorder, "AgentDirectory", TOPICS, ("by_id", "_by_uuid"),
            [__name__, "chorus.engine.domain.agent", "chorus.events.agent"],
            every=checkpoint_every,
        )  # fmt: skip

    def catch_up(self) -> dict[str, AgentState]:  # type: ignore[override]
        """Read what is new; returns every agent by id (do not mutate)."""
        super().catch_up()
        return self.by_id

    def fold(self, notification: Notification) -> None:
        record = decode_record(notification)
        uuid = UUID(str(notification.originator_id))
        state = self._by_uuid.get(uuid)
        if state is None:
            state = AgentState(id=uuid)
            self._by_uuid[uuid] = state
        state.apply(typed_event(record))
        state.last_hash = record.hash
        if state.agent_id:
            self.by_id[state.agent_id] = state
