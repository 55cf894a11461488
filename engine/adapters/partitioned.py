"""Partitioned command handling: each aggregate's commands are decided by one engine.

Every engine takes commands from the queue group on ``chorus.cmd.>`` as before; each
command belongs to a partition, a stable hash of its target aggregate's id
(``chorus.engine.domain.partitions``). An engine decides the commands of the partitions it
owns and passes every other one on, unchanged (body and headers, plus the subject it was
sent to in ``Chorus-Command-Subject``), as a request on ``chorus.part.<p>``, where only
the partition's owner listens; the owner's reply goes back to the requester through it.
Commands the engine's own process managers issue take the same way.

Why not let NATS partition the subjects (a subject mapping with ``partition(N, ...)``)?
The aggregate a command writes is named in its payload, not its subject, and for some
commands only the engine can tell which one it is (``task.accept`` picks a session or a
workflow by its task id; agent names map to ids). Putting the id in the subject would
change the contract every agent speaks (and let a subject disagree with its payload);
passing commands on keeps the contract and costs one hop for the share of commands that
reach a non-owner (none when one engine runs alone). The partition subjects are
engine-only on a secured bus (runtime/busauth.py): what arrives there was checked at the
edge by the engine that passed it on, so the owner trusts its actor.

A command is never lost between engines: while a partition has no owner (a handover, or
an engine that died and whose lease has not run out yet) the request finds no responders;
the passing engine tries again, takes the command itself if the partition has become its
own meanwhile, and after ``grace`` seconds answers a retryable rejection
(``engine_unavailable``; ``store_unavailable`` to a process manager, which retries that).
Dedup by command id makes every retry safe.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import msgspec
from chorus.aio import raise_if_cancelling
from chorus.contracts import errors as codes
from chorus.contracts.envelope import Reply
from chorus.contracts.errors import ErrorInfo
from chorus.contracts.subjects import (
    COMMAND_SUBJECT_HEADER,
    PARTITION_QUEUE,
    command_subject,
    partition_subject,
)
from chorus.engine.adapters import metrics
from chorus.engine.domain.partitions import partition_of
from chorus.engine.processor import Command
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

_encoder = msgspec.json.Encoder()
_reply = msgspec.json.Decoder(Reply)

#: What a passed-on command resolves to: the owner's reply (bytes), or None when this
#: engine took the command itself (its worker answers).
Relayed = bytes | None


class PartitionRouting:
    """Which partitions this engine takes now, the commands of each still in flight, and
    the passing on of the others' commands."""

    def __init__(self, nc: NATS, count: int, *, grace: float = 10.0, timeout: float = 30.0) -> None:
        self.nc = nc
        self.count = count
        #: Seconds a command waits for its partition to have an owner before the retryable
        #: rejection (longer than a lease, so a dead owner is replaced in that time).
        self.grace = grace
        #: Seconds the owner may take to answer a passed-on command.
        self.timeout = timeout
        self.active: set[int] = set()
        self._in_flight: Counter[int] = Counter()
        self._settled = asyncio.Condition()
        self._waiting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.forwarded = 0

    # Ownership, as the table gives it ------------------------------------------------------

    def partition(self, command: Command) -> int | None:
        """The command's partition; None if it names no valid target (its decision rejects
        it, writing nothing, wherever it runs)."""
        try:
            target = command.target
        except Exception:
            return None
        return partition_of(target, self.count)

    def owns(self, partition: int) -> bool:
        return partition in self.active

    def enter(self, partition: int | None) -> None:
        """A command of ``partition`` is queued here."""
        if partition is not None:
            self._in_flight[partition] += 1

    def leave(self, partitions: Collection[int | None]) -> None:
        """Those commands were answered."""
        for partition in partitions:
            if partition is not None:
                self._in_flight[partition] -= 1
        if self._waiting:  # a handover waits for its partitions to settle
            self._spawn(self._notify())

    async def _notify(self) -> None:
        async with self._settled:
            self._settled.notify_all()

    async def settled(self, partitions: Collection[int]) -> None:
        """Until no command of ``partitions`` is queued or in a batch here."""
        self._waiting += 1
        try:
            async with self._settled:
                await self._settled.wait_for(
                    lambda: all(self._in_flight[p] <= 0 for p in partitions)
                )
        finally:
            self._waiting -= 1

    # Passing on -------------------------------------------------------------------------

    def forward(
        self, msg: Msg, command: Command, partition: int, local: Callable[[], None]
    ) -> None:
        """Pass a command from the bus on to its partition's owner, and its reply back
        (in a task: the subscription goes on at once). ``local`` queues it here instead,
        should the partition become this engine's while it waits."""
        headers = dict(msg.headers or {})
        headers[COMMAND_SUBJECT_HEADER] = msg.subject

        async def take_here() -> Relayed:
            local()
            return None

        async def relay() -> None:
            reply = await self.relay(partition, msg.data, headers, take_here)
            if reply is not None and msg.reply:
                try:
                    await self.nc.publish(msg.reply, reply)
                except Exception:  # the connection is closing: the requester retries
                    raise_if_cancelling()

        self._spawn(relay())

    async def submit(
        self, command: Command, partition: int, local: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        """A process manager's command, through its partition's owner."""
        subject = command_subject(command.actor, command.handler.aggregate, command.handler.command)
        answer: Reply | None = None

        async def take_here() -> Relayed:
            nonlocal answer
            answer = await local()
            return None

        raw = await self.relay(
            partition,
            _encoder.encode(command.envelope),
            {COMMAND_SUBJECT_HEADER: subject},
            take_here,
            manager=True,
        )
        if raw is None:
            assert answer is not None
            return answer
        return _reply.decode(raw)

    async def relay(
        self,
        partition: int,
        data: bytes,
        headers: dict[str, str],
        take_here: Callable[[], Awaitable[Relayed]],
        *,
        manager: bool = False,
    ) -> Relayed:
        """The owner's reply to a request on the partition's subject, retried while the
        partition has no owner; taken here if it becomes ours; a retryable rejection
        after ``grace``."""
        deadline = time.monotonic() + self.grace
        delay = 0.02
        metrics.FORWARDED.inc()
        self.forwarded += 1
        while True:
            if self.owns(partition):
                return await take_here()
            try:
                msg = await self.nc.request(
                    partition_subject(partition), data, timeout=self.timeout, headers=headers
                )
                return bytes(msg.data)
            except NoRespondersError:
                if time.monotonic() + delay > deadline:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            except (NatsTimeout, TimeoutError):
                break  # the owner took it and did not answer: the requester retries
            except Exception as error:  # the connection is down: the requester retries
                raise_if_cancelling()
                return _unowned(data, partition, manager, f"could not pass it on: {error}")
        return _unowned(data, partition, manager, "no engine took it in time")

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _unowned(data: bytes, partition: int, manager: bool, why: str) -> bytes:
    """The retryable rejection of a command its partition's owner did not answer."""
    try:
        command_id = str(msgspec.json.decode(data).get("command_id", ""))[:200]
    except Exception:
        command_id = ""
    return _encoder.encode(
        Reply(
            command_id=command_id,
            status="rejected",
            error=ErrorInfo(
                # A process manager retries store_unavailable (nothing was recorded).
                code=codes.STORE_UNAVAILABLE if manager else codes.ENGINE_UNAVAILABLE,
                message=f"partition {partition}: {why}; nothing was recorded, "
                "retry with the same command id",
            ),
        )
    )


class PartitionSubscriptions:
    """The worker's side of the ownership table (the ``PartitionHolder`` port): one
    subscription per owned partition subject, the cache forgotten before a partition is
    taken, and a handover that waits for the partition's commands in flight."""

    def __init__(
        self,
        nc: NATS,
        routing: PartitionRouting,
        on_message: Callable[[Msg], Awaitable[None]],
        forget: Callable[[frozenset[int]], Awaitable[None]],
    ) -> None:
        self.nc = nc
        self.routing = routing
        self.on_message = on_message
        self.forget = forget
        self._subs: dict[int, Subscription] = {}

    async def acquire(self, partitions: frozenset[int]) -> None:
        await self.forget(partitions)
        for partition in sorted(partitions):
            if partition not in self._subs:
                self._subs[partition] = await self.nc.subscribe(
                    partition_subject(partition), queue=PARTITION_QUEUE, cb=self.on_message,
                    pending_msgs_limit=1_000_000, pending_bytes_limit=1024 * 1024 * 1024,
                )  # fmt: skip
        await self.nc.flush()
        self.routing.active.update(partitions)
        metrics.PARTITIONS_OWNED.set(len(self.routing.active))

    async def release(self, partitions: frozenset[int]) -> None:
        # Drain: the server stops sending, what it sent is still queued here.
        await self._stop_taking(partitions, drain=True)
        await self.routing.settled(partitions)

    async def drop(self, partitions: frozenset[int]) -> None:
        await self._stop_taking(partitions, drain=False)

    async def _stop_taking(self, partitions: frozenset[int], *, drain: bool) -> None:
        self.routing.active.difference_update(partitions)
        metrics.PARTITIONS_OWNED.set(len(self.routing.active))
        for partition in partitions:
            sub = self._subs.pop(partition, None)
            if sub is None:
                continue
            try:
                await (sub.drain() if drain else sub.unsubscribe())  # type: ignore[no-untyped-call]
            except Exception:  # the connection is closing: nothing more arrives
                raise_if_cancelling()
