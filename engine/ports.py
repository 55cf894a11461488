"""The engine's ports: what its parts need from one another, as protocols.

The composition root (``chorus.bootstrap``) builds each part with the others it needs,
through these, instead of setting attributes on a part after it was made. Each protocol is
small, so a test can hand in a fake, and a part depends on what it uses, not on the bus
worker that happens to provide it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from chorus.contracts.envelope import Reply
from nats.aio.msg import Msg

if TYPE_CHECKING:
    from chorus.engine.adapters.worker import InvalidMessage
    from chorus.engine.processor import Command


class CommandSink(Protocol):
    """Where process managers, timers and liveness send their commands: the same pipeline
    (batch, decide, commit) as a command from the bus, answered when it is durable."""

    async def submit(self, command: Command) -> Reply: ...


class DeadLetterSink(Protocol):
    """Answers a message that is not a command, and keeps a copy on ``chorus.dlq.>``."""

    async def reject(self, msg: Msg, rejection: InvalidMessage) -> None: ...


class HeartbeatSink(Protocol):
    """Takes heartbeats off the command subjects (they are not events); never waits."""

    async def on_heartbeat(self, msg: Msg) -> None: ...


class CommitListener(Protocol):
    """Told after each committed batch, so it looks at the log now rather than at its next
    poll (the relay, the dispatcher)."""

    def wake(self) -> None: ...


class PartitionHolder(Protocol):
    """What takes a partition's commands in this engine (the bus worker), as the ownership
    table gives partitions to it and takes them away (``chorus.engine.adapters.ownership``)."""

    async def acquire(self, partitions: frozenset[int]) -> None:
        """Forget cached aggregates of ``partitions`` (another engine may have written
        them), then start taking their commands."""

    async def release(self, partitions: frozenset[int]) -> None:
        """Stop taking their commands and return once those in flight are answered."""

    async def drop(self, partitions: frozenset[int]) -> None:
        """Stop taking their commands at once (the lease ran out: no waiting)."""
