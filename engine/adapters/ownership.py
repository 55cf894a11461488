"""Which engine owns which partition: one table in a JetStream KV bucket, written by
compare-and-set.

Chosen over a lease key per partition and over rendezvous hashing on a membership view:
one record holds the members and the owners, so a join, a leave or a takeover is one
atomic write that every engine sees whole; an engine reads it with one request per round
and writes it once (its heartbeat), however many partitions there are. Rendezvous hashing
alone lets two engines whose views differ for a moment both take a partition; here an
engine takes one only by a write that names it the owner, and gives one up by a write
after it finished the partition's commands in flight (the fence).

Each round (every ``lease / 5`` seconds, or at once when a handover is ready) an engine
reads the table, and writes its next version (``chorus.engine.domain.partitions.plan``)
with the revision it read. The write bumps its heartbeat, frees the partitions of engines
whose heartbeat did not move for a lease (as this engine's clock saw it), frees what it
finished handing over, claims free partitions up to its fair share (ceil(P / engines)) and
names those it holds above that share: it stops taking their commands, waits until those
in flight are answered, and frees them in its next write; the engine below its share
claims them in its own next round. If the write loses the race, it reads and plans again.

An engine restarted on the same machine does not wait for its predecessor's lease: each
engine notes where it runs (kernel boot id, pid namespace, pid) in the table, and a process
that is gone from that machine is dead at once (a pid that still runs, whatever it now
is, waits for the lease). ``chorus up`` restarting a crashed engine is as quick as before.

An engine takes a partition's commands only while its lease is fresh: if no write of its
own has succeeded for ``0.6 * lease`` seconds (a NATS outage, a stalled process), it drops
every partition at once, well before another engine may declare it dead, and takes them
back (cache forgotten) once a write succeeds again. A stopping engine hands everything
over and leaves the table. The version check on the store and the dedup record remain the
safety net for a process that stalls in the middle of a commit.

The bucket is in memory: it holds nothing that outlives the engines (a restarted NATS
starts with an empty table, and the engines claim again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from chorus.aio import raise_if_cancelling
from chorus.contracts.subjects import PARTITIONS_BUCKET
from chorus.engine.domain.partitions import (
    BeatWatch,
    CountMismatch,
    Plan,
    Table,
    leave,
    plan,
    vanished,
)
from chorus.engine.ports import PartitionHolder
from nats.aio.client import Client as NATS
from nats.js.api import StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

KEY = "table"
_decoder = msgspec.json.Decoder(Table)
_encoder = msgspec.json.Encoder()


def worker_name() -> str:
    """A new engine's id in the table: readable (host and pid), unique (a random tail)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def machine() -> str:
    """``<kernel boot id>/<pid namespace>`` on Linux, where pids of this machine and
    namespace can be checked; "" elsewhere (the lease alone decides there)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


class Ownership:
    """This engine's membership in the partition table (see the module docstring)."""

    def __init__(
        self,
        nc: NATS,
        holder: PartitionHolder,
        count: int,
        *,
        lease: float = 5.0,
        replicas: int = 1,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nc = nc
        self.holder = holder
        self.count = count
        self.lease = lease
        self.replicas = replicas
        self.me = worker_id or worker_name()
        self.clock = clock
        self.interval = lease / 5
        self.fence_after = lease * 0.6
        self.watch = BeatWatch(lease)
        self.here = machine()
        self.place = f"{self.here}/{os.getpid()}" if self.here else ""
        self.alive = pid_alive
        #: Partitions whose commands the holder takes now.
        self.active: frozenset[int] = frozenset()
        self._releasing: set[int] = set()
        self._drained: set[int] = set()
        self._renewed_at: float | None = None
        self._wake = asyncio.Event()
        self._handovers: set[asyncio.Task[None]] = set()
        self.kv: KeyValue | None = None
        #: The table as this engine last wrote it.
        self.table: Table | None = None
        self.rounds = 0
        self._stopped = False

    async def start(self) -> None:
        """Open the bucket and join: a lone engine owns every partition when this returns."""
        await self._open_bucket()
        await self.round()

    async def _open_bucket(self) -> None:
        """Create the bucket, or open it if another engine made it. Also after a failed
        round: a restarted NATS server has lost the in-memory bucket."""
        js = self.nc.jetstream()
        try:
            self.kv = await js.create_key_value(
                bucket=PARTITIONS_BUCKET, history=1, storage=StorageType.MEMORY,
                replicas=self.replicas,
            )  # fmt: skip
        except Exception:
            raise_if_cancelling()
            self.kv = await js.key_value(PARTITIONS_BUCKET)  # made by another engine

    async def run(self) -> None:
        """Rounds until cancelled; a round that fails is tried again at the next one."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.round()
            except CountMismatch:
                raise
            except Exception as error:
                raise_if_cancelling()
                log.warning("partition table round failed: %r", error)
                with contextlib.suppress(Exception):
                    await self._open_bucket()
            await self._fence()

    async def round(self) -> None:
        """Read the table, write this engine's next version of it, act on what it says."""
        assert self.kv is not None
        for _ in range(10):
            table, revision = await self._read()
            # Handovers finish concurrently: free exactly what this write was planned with.
            drained = frozenset(self._drained)
            dead = self.watch.dead(table, self.me, self.clock())
            dead |= vanished(table, self.here, self.alive) - {self.me}
            step = plan(
                table, self.me, self.count, dead=dead, drained=drained,
                releasing=frozenset(self._releasing), place=self.place,
            )  # fmt: skip
            sent = self.clock()
            try:
                await self._write(step.table, revision)
            except KeyWrongLastSequenceError:
                continue  # another engine wrote first: read again
            self._renewed_at = sent
            self.rounds += 1
            self.table = step.table
            self._drained -= drained  # freed by this write
            await self._apply(step)
            return
        log.info("partition table: busy, trying again next round")

    async def _read(self) -> tuple[Table | None, int | None]:
        assert self.kv is not None
        try:
            entry = await self.kv.get(KEY)
        except KeyNotFoundError:
            return None, None
        if not entry.value:
            return None, entry.revision
        return _decoder.decode(entry.value), entry.revision

    async def _write(self, table: Table, revision: int | None) -> None:
        assert self.kv is not None
        if revision is None:
            await self.kv.create(KEY, _encoder.encode(table))
        else:
            await self.kv.update(KEY, _encoder.encode(table), last=revision)

    async def _apply(self, step: Plan) -> None:
        """Make the holder take what the table gives this engine and nothing else."""
        held = step.table.held_by(self.me)
        lost = self.active - held
        if lost:  # others declared this engine dead: it stopped renewing for a lease
            log.warning("partitions %s were taken over by other engines", sorted(lost))
            self.active -= lost
            await self.holder.drop(lost)
        handing = step.release - self._releasing
        if handing:
            self.active -= handing
            self._releasing |= handing
            task = asyncio.create_task(self._hand_over(frozenset(handing)))
            self._handovers.add(task)
            task.add_done_callback(self._handovers.discard)
        gained = held - self.active - self._releasing
        if gained:
            await self.holder.acquire(frozenset(gained))
            self.active |= gained

    async def _hand_over(self, partitions: frozenset[int]) -> None:
        """Finish the partitions' commands here, then free them at the next round."""
        try:
            await self.holder.release(partitions)
        finally:
            self._releasing -= partitions
            self._drained |= partitions
            self._wake.set()

    async def _fence(self) -> None:
        """Stop taking commands once this engine's lease may be running out."""
        stale = self._renewed_at is None or self.clock() - self._renewed_at > self.fence_after
        if stale and self.active:
            log.warning("partition lease not renewed for %.1f s: taking no commands", self.lease)
            dropped, self.active = self.active, frozenset()
            await self.holder.drop(dropped)

    async def stop(self, timeout: float = 5.0) -> None:
        """Hand every partition over and leave the table (bounded by ``timeout``)."""
        if self._stopped:
            return
        self._stopped = True
        for task in list(self._handovers):
            task.cancel()
        mine, self.active = self.active | self._releasing, frozenset()
        try:
            async with asyncio.timeout(timeout):
                await self.holder.release(frozenset(mine))
                await self._leave()
        except Exception as error:
            raise_if_cancelling()
            log.warning("could not hand the partitions over: %r", error)

    async def _leave(self) -> None:
        if self.kv is None:
            return
        for _ in range(10):
            table, revision = await self._read()
            if table is None or self.me not in table.members:
                return
            try:
                await self._write(leave(table, self.me), revision)
                return
            except KeyWrongLastSequenceError:
                continue
