"""Open sessions that name other agents, by opener: the engine's own session quota.

An agent key that opens sessions naming other agents hands them work; unbounded, that is a
way to flood the fleet (and, before verdicts were earned, to farm reliability). The gateway
refuses such an open over HTTP once the opener holds ``session_quota`` of them, but an agent
may also open sessions on the bus, so the engine applies the same bound itself: ``decide_open``
asks ``held_by`` through the engine context (engine/domain/session.py).

Follows the session topics of the log like the agent directory (engine/policies/directory.py) and
keeps its state in a checkpoint, so a start reads only the session events recorded since.
The count is as of the last catch-up, before each decision: sessions opened earlier in the
same batch are not in it yet, so a burst may pass the bound by at most one batch.
"""

from __future__ import annotations

from chorus.engine.policies.checkpoint import CheckpointedFold
from chorus.events.codec import decode_record, topic_of, typed_event
from chorus.events.session import SessionOpened
from eventsourcing.persistence import ApplicationRecorder, Notification

#: An open session's start and its three ends.
TOPICS = [
    topic_of("session", name)
    for name in ("SessionOpened", "SessionFinalised", "SessionTimedOut", "SessionCancelled")
]


class OpenSessionsByOpener(CheckpointedFold):
    """How many open sessions naming other agents each opener holds, as of the log."""

    def __init__(self, recorder: ApplicationRecorder, *, checkpoint_every: float = 1.0) -> None:
        #: Open sessions that name another agent -> their opener.
        self.opener_of: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        super().__init__(
            recorder, "OpenSessionsByOpener", TOPICS, ("opener_of", "counts"),
            [__name__, "chorus.events.session"], every=checkpoint_every,
        )  # fmt: skip

    def held_by(self, actor: str) -> int:
        """Open sessions naming other agents that ``actor`` opened, as of the log now."""
        self.catch_up()
        return self.counts.get(actor, 0)

    def fold(self, notification: Notification) -> None:
        session_id = str(notification.originator_id)
        event = typed_event(decode_record(notification))
        if isinstance(event, SessionOpened):
            if any(p != event.opened_by for p in event.participants):
                self.opener_of[session_id] = event.opened_by
                self.counts[event.opened_by] = self.counts.get(event.opened_by, 0) + 1
            return
        opener = self.opener_of.pop(session_id, None)  # one of the ends
        if opener is not None:
            left = self.counts.get(opener, 0) - 1
            if left > 0:
                self.counts[opener] = left
            else:
                self.counts.pop(opener, None)
