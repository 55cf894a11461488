"""The agents as this engine last read them from the log: for routing and liveness.

Folds only the agent topics of the notification log into ``AgentState``s, so a catch-up
when nothing changed is one small query. The processor catches up before each routing
decision; the liveness monitor before each sweep.
"""

from __future__ import annotations

import threading
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder

from engine.agent import AgentState
from events.agent import AGENT_EVENTS
from events.codec import decode_record, topic_of, typed_event
from events.store import select_topics_after

TOPICS = [topic_of("agent", name) for name in AGENT_EVENTS]


class AgentDirectory:
    def __init__(self, recorder: ApplicationRecorder) -> None:
        self.recorder = recorder
        self.position = 0
        self.by_id: dict[str, AgentState] = {}
        self._by_uuid: dict[UUID, AgentState] = {}
        self._lock = threading.Lock()

    def catch_up(self) -> dict[str, AgentState]:
        """Read what is new; returns every agent by id (do not mutate)."""
        with self._lock:
            while True:
                batch, position = select_topics_after(self.recorder, self.position, TOPICS)
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
                    return self.by_id
                self.position = position
