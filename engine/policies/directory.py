"""The agents as this engine last read them from the log: for routing and liveness.

Folds only the agent topics of the notification log into ``AgentState``s, so a catch-up
when nothing changed is one small query. The processor catches up before each routing
decision; the liveness monitor before each sweep. The agents and the position are saved
in a checkpoint (engine/policies/checkpoint.py), shared by every directory on the same store, so a
start reads only the agent events recorded since.
"""

from __future__ import annotations

import threading
from uuid import UUID

from chorus.engine.domain.agent import AgentState
from chorus.engine.policies.checkpoint import StateCheckpoint
from chorus.events.agent import AGENT_EVENTS
from chorus.events.codec import decode_record, topic_of, typed_event
from chorus.store.checkpoints import CheckpointStore
from chorus.store.recorder import select_topics_after
from eventsourcing.persistence import ApplicationRecorder

TOPICS = [topic_of("agent", name) for name in AGENT_EVENTS]


class AgentDirectory:
    def __init__(self, recorder: ApplicationRecorder, *, checkpoint_every: float = 1.0) -> None:
        self.recorder = recorder
        self.position = 0
        self.by_id: dict[str, AgentState] = {}
        self._by_uuid: dict[UUID, AgentState] = {}
        self._lock = threading.Lock()
        self.events_read = 0
        self.checkpoint = StateCheckpoint(
            CheckpointStore(recorder), "AgentDirectory", self, ("by_id", "_by_uuid"),
            [__name__, "chorus.engine.domain.agent", "chorus.events.agent"], every=checkpoint_every,
        )  # fmt: skip
        self._restored = False

    def catch_up(self) -> dict[str, AgentState]:
        """Read what is new; returns every agent by id (do not mutate)."""
        with self._lock:
            if not self._restored:
                self.position = self.checkpoint.restore()
                self._restored = True
            while True:
                batch, position = select_topics_after(self.recorder, self.position, TOPICS)
                self.events_read += len(batch)
                for notification in batch:
                    record = decode_record(notification)
                    event = typed_event(record)
                    uuid = UUID(str(notification.originator_id))
                    state = self._by_uuid.get(uuid)
                    if state is None:
                        state = AgentState(id=uuid)
                        self._by_uuid[uuid] = state
                    state.apply(event)
                    state.last_hash = record.hash
                    if state.agent_id:
                        self.by_id[state.agent_id] = state
                if position == self.position:
                    self.checkpoint.save(position)
                    return self.by_id
                self.position = position
