"""The engine process's parts, built and run: the composition root's engine half.

``EngineService.start`` connects to NATS and builds the processor, the command intake, the
bus worker, the process managers, the relay, the sealer and liveness, handing each the
ports it needs (``chorus.engine.ports``) when it is made; nothing is set on a part
afterwards. ``chorus.bootstrap.bootstrap`` fills ``EngineConfig`` from the settings; tests
and benches build one through the same function, or directly with their own fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from chorus.aio import in_thread
from chorus.audit.bundle import load_signing_key
from chorus.contracts.servers import servers
from chorus.contracts.subjects import COMMITTED
from chorus.contracts.tracing import tracer_of
from chorus.contracts.workflow_types import WorkflowTypeRegistry
from chorus.engine.adapters.liveness import LivenessConfig, LivenessMonitor
from chorus.engine.adapters.ownership import Ownership
from chorus.engine.adapters.partitioned import PartitionRouting
from chorus.engine.adapters.relay import Relay
from chorus.engine.adapters.sealer import Sealer
from chorus.engine.adapters.streams import ensure_streams, until_jetstream_answers
from chorus.engine.adapters.walcheckpoints import WalCheckpointer
from chorus.engine.adapters.worker import CommandIntake, CommandWorker, DeadLetters
from chorus.engine.domain.authz import Roles, StaticRoles
from chorus.engine.domain.context import EngineContext
from chorus.engine.policies.delegation import DelegationManager
from chorus.engine.policies.dispatch import DispatchConfig, Dispatcher
from chorus.engine.policies.logtail import LogTail
from chorus.engine.policies.participants import ParticipantWatch
from chorus.engine.policies.timers import SessionTimer
from chorus.engine.processor import Clock, Processor, utc_now
from chorus.store import tracecontext
from chorus.store.recorder import open_recorder, sqlite_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.persistence import ApplicationRecorder
from nats.aio.client import Client as NATS
from opentelemetry.trace import Tracer, TracerProvider

log = logging.getLogger(__name__)


async def close_nats(nc: NATS, timeout: float = 3.0) -> None:
    """Drain if the server is there; never hang on shutdown if it is not."""
    try:
        async with asyncio.timeout(timeout):
            await nc.drain()
    except Exception:
        with contextlib.suppress(Exception):
            await nc.close()


def _signing_key(path: Path | None) -> Ed25519PrivateKey | None:
    """The audit signing key if there is one to use (``chorus up`` creates it)."""
    if path is None:
        return None
    try:
        return load_signing_key(path)
    except FileNotFoundError:
        log.info("no audit signing key at %s: the seal anchor is written unsigned", path)
        return None


@dataclass
class EngineConfig:
    nats_url: str
    database_url: str
    batch_max: int = 256
    batch_window: float = 0.002
    cache_size: int = 10_000
    #: Take commands: the bus worker, the processor and the process managers. Off, the
    #: service runs only the relay and the sealer (``chorus relay``, which ``chorus up``
    #: runs beside an engine started with ``CHORUS_ENGINE_RELAY=false``).
    commands: bool = True
    relay: bool = True
    #: Seconds the relay waits for new rows once it has caught up. In the engine a commit
    #: wakes it at once; in a process of its own it polls the store this often.
    relay_idle: float = 0.05
    timers: bool = True
    delegation: bool = True
    #: The dispatcher: phases to agents, leases, task delivery on ``chorus.task.<agent>``.
    dispatch: bool = True
    dispatch_config: DispatchConfig = field(default_factory=DispatchConfig)
    #: Heartbeats, online/offline transitions and the participant watch.
    liveness: bool = True
    liveness_config: LivenessConfig = field(default_factory=LivenessConfig)
    #: Extend the seal ledger (the log's running hash) as events are recorded.
    sealer: bool = True
    #: Append each new head seal (``POS:HASH``) to this file, outside the database, so that
    #: ``chorus audit verify`` notices events removed from the end with their seals.
    seal_anchor_path: Path | None = None
    #: The deployment's audit signing key (PEM), which signs each anchor line when the file
    #: exists; without it the anchor is written unsigned.
    audit_key_path: Path | None = None
    replicas: int = 1
    #: Command partitions (chorus.engine.adapters.partitioned); the same on every engine of
    #: a deployment. 0: none (every engine decides whatever it takes, as before).
    partitions: int = 32
    #: Seconds after an engine's last heartbeat in the partition table before the others
    #: take its partitions over.
    partition_lease: float = 5.0
    workflow_types: WorkflowTypeRegistry = field(default_factory=WorkflowTypeRegistry)
    #: Every actor's roles, the engine's operator directory (``bootstrap`` reads them from
    #: the key store).
    roles: Roles = field(default_factory=StaticRoles)
    #: Open sessions naming other agents one agent may hold (0: no bound; engine/policies/quota.py).
    session_quota: int = 0
    clock: Clock = field(default=utc_now)
    #: Traces commands that arrive with a W3C trace context (off when None).
    tracer_provider: TracerProvider | None = None


class EngineService:
    """Everything the engine process runs; ``start`` then ``stop`` (or ``async with``)."""

    def __init__(self, config: EngineConfig, recorder: ApplicationRecorder | None = None) -> None:
        self.config = config
        #: The SQLite file whose WAL this engine checkpoints (its writer does not).
        self.wal_file: str | None = None
        self.checkpointer: WalCheckpointer | None = None
        if recorder is None:
            # An engine taking commands leaves the WAL's checkpoints to a loop of its own
            # (chorus.engine.adapters.walcheckpoints): they stalled its writer.
            recorder = open_recorder(config.database_url, inline_checkpoints=not config.commands)
            self.wal_file = sqlite_file(recorder) if config.commands else None
        self.recorder = recorder
        self.nc: NATS | None = None
        self.worker: CommandWorker | None = None
        self.relay: Relay | None = None
        self.timer: SessionTimer | None = None
        self.delegation: DelegationManager | None = None
        self.liveness: LivenessMonitor | None = None
        self.participants: ParticipantWatch | None = None
        self.dispatcher: Dispatcher | None = None
        self.ownership: Ownership | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        cfg = self.config
        # A comma-separated list names the nodes of a cluster (any one lets us in); the
        # credentials go to every node, those the cluster announces too (contracts.servers).
        urls, credentials = servers(cfg.nats_url)
        self.nc = await nats.connect(
            urls, name="chorus-engine", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            **credentials,
        )  # fmt: skip
        nc = self.nc
        js = nc.jetstream()
        # A cluster may be electing a leader, or have lost the node this request went
        # through: wait for it rather than exit.
        await until_jetstream_answers(lambda: ensure_streams(js, cfg.replicas), "the streams")
        tracer = tracer_of(cfg.tracer_provider, "chorus.engine")
        if tracer is not None:
            await in_thread(tracecontext.ensure_table, self.recorder)
        if cfg.relay:
            self.relay = Relay(
                self.recorder, nc, tracer=tracer, idle_interval=cfg.relay_idle,
                listen=None if cfg.commands else COMMITTED, read_on_loop=not cfg.commands,
            )  # fmt: skip
            self._run("engine-relay", self.relay.run())
        if cfg.sealer:
            sealer = Sealer(
                self.recorder, anchor_path=cfg.seal_anchor_path,
                anchor_key=_signing_key(cfg.audit_key_path),
            )  # fmt: skip
            self._run("engine-sealer", sealer.run())
        if self.wal_file is not None:
            self.checkpointer = WalCheckpointer(self.wal_file)
            self._run("engine-wal-checkpoints", self.checkpointer.run())
        if cfg.commands:
            await self._start_command_path(nc, tracer)

    async def _start_command_path(self, nc: NATS, tracer: Tracer | None) -> None:
        """The processor, the bus worker and the process managers around them."""
        cfg = self.config
        processor = Processor(
            self.recorder,
            clock=cfg.clock,
            cache_size=cfg.cache_size,
            context=EngineContext(
                workflow_types=cfg.workflow_types, roles=cfg.roles, session_quota=cfg.session_quota
            ),
        )
        # Made first: the process managers send into it, the worker drains it; with
        # partitions it passes what this engine does not own on to the owner.
        routing = (
            PartitionRouting(nc, cfg.partitions, grace=2 * cfg.partition_lease)
            if cfg.partitions
            else None
        )
        intake = CommandIntake(routing)
        dead_letters = DeadLetters(nc)
        # The followers read what is new through one tail, each record read and decoded once.
        followers = (SessionTimer, DelegationManager, Dispatcher, ParticipantWatch)
        tail = LogTail(self.recorder, {topic for f in followers for topic in f.topics})
        processor.on_commit = tail.committed  # its own rows reach the tail without a query
        if cfg.timers:
            self.timer = SessionTimer(self.recorder, intake, cfg.clock, log=tail)
        if cfg.delegation:
            self.delegation = DelegationManager(self.recorder, intake, log=tail)
        if cfg.dispatch:
            self.dispatcher = Dispatcher(
                self.recorder, intake, nc, cfg.clock, cfg.dispatch_config, log=tail
            )
        if cfg.liveness:
            self.liveness = LivenessMonitor(
                self.recorder, intake, nc, cfg.liveness_config, cfg.clock, cfg.replicas,
                dead_letters=dead_letters,
            )  # fmt: skip
            self.participants = ParticipantWatch(self.recorder, intake, log=tail)
        # New events: the relay and the dispatcher look now rather than at their next poll.
        listeners = [part for part in (self.relay, self.dispatcher) if part is not None]
        self.worker = CommandWorker(
            nc, processor, batch_max=cfg.batch_max, batch_window=cfg.batch_window,
            tracer=tracer, intake=intake, dead_letters=dead_letters,
            heartbeats=self.liveness, listeners=listeners,
        )  # fmt: skip
        self._run("engine-worker", self.worker.run())
        if self.worker.partitions is not None:
            # Joins the table before the worker takes commands: alone, it owns them all.
            self.ownership = Ownership(
                nc, self.worker.partitions, cfg.partitions, lease=cfg.partition_lease,
                replicas=cfg.replicas,
            )  # fmt: skip
            await until_jetstream_answers(self.ownership.start, "the partition table")
            self._run("engine-partitions", self.ownership.run())
        if self.timer is not None:
            self._run("engine-timer", self.timer.run())
        if self.delegation is not None:
            self._run("engine-delegation", self.delegation.run())
        if self.dispatcher is not None:
            self._run("engine-dispatch", self.dispatcher.run())
        if self.liveness is not None:
            await until_jetstream_answers(self.liveness.start, "the liveness bucket")
            self._run("engine-liveness", self.liveness.run())
        if self.participants is not None:
            self._run("engine-participants", self.participants.run())
        await self.worker.start()

    def _run(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    async def wait_ready(self) -> None:
        """Until every process manager has read the log up to its end (from its checkpoint)
        and the agent directories are current: what a start-up costs."""
        managers = [self.timer, self.delegation, self.dispatcher, self.participants]
        waits: list[Awaitable[object]] = [m.ready.wait() for m in managers if m is not None]
        directories = [self.worker.processor.directory] if self.worker is not None else []
        if self.dispatcher is not None:
            directories.append(self.dispatcher.directory)
        if self.liveness is not None:
            directories.append(self.liveness.directory)
        waits += [in_thread(d.catch_up) for d in directories]
        await asyncio.gather(*waits)

    async def wait_failed(self) -> asyncio.Task[None]:
        """Returns the first of the engine's tasks to end; they only end by failing."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done))

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        if self.ownership is not None:
            # While the worker still runs: its partitions' commands finish, then another
            # engine takes them.
            await self.ownership.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task that ignores its cancellation must not hang shutdown.
            done, stuck = await asyncio.wait(self._tasks, timeout=5)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.warning("task %s had failed: %s", task.get_name(), task.exception())
            for task in stuck:
                log.warning("task %s did not stop in time", task.get_name())
        if self.worker is not None:
            self.worker.close()
        if self.nc is not None:
            await close_nats(self.nc)

    async def __aenter__(self) -> EngineService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
