"""Liveness: heartbeats in a fast store, only the transitions in the event store.

Agents publish ``chorus.cmd.<agent_id>.agent.heartbeat`` as often as they like. The
monitor keeps the last time it saw each agent in memory and in the JetStream KV bucket
``chorus_liveness`` (written at most every half interval per agent, so 200 beats/s cost a
few KV writes), and records an event only when the status changes:

- a heartbeat from an agent the log says is offline sends ``mark_online``;
- an online agent unseen for ``missed`` heartbeat intervals gets ``mark_offline``.

Heartbeats never wait on anything in the command path: the worker hands them to the
monitor's own queue (full: the beat is dropped, the next one will do), the monitor answers
from memory, and a background writer flushes the last beat per agent to the KV bucket.
A slow or absent JetStream therefore delays no command.

Several engine workers share the heartbeats (queue group), so before marking an agent
offline a worker reads the KV bucket, which every worker writes. Command ids are derived
from the agent's version (``online:<id>:<v>`` / ``offline:<id>:<v>``), so workers racing
on one transition record it once.

An agent that died while no engine ran is caught too: the log says online, the KV bucket
holds its real last heartbeat. Heartbeats sent while no engine ran were lost, so after a
start the monitor waits one full timeout before it marks anyone offline: live agents get
the time to beat again, and nobody flaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from chorus.aio import in_thread, raise_if_cancelling
from chorus.contracts import errors as codes
from chorus.contracts.agents import Heartbeat, MarkOffline, MarkOnline, agent_uuid
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.errors import ErrorInfo
from chorus.contracts.subjects import (
    LIVENESS_BUCKET,
    is_token,
    liveness_key,
    parse_command_subject,
)
from chorus.engine.adapters.worker import InvalidMessage
from chorus.engine.handlers import HANDLERS
from chorus.engine.policies.directory import AgentDirectory
from chorus.engine.ports import CommandSink, DeadLetterSink
from chorus.engine.processor import Command, utc_now
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

BUCKET = LIVENESS_BUCKET
_reply = msgspec.json.Encoder()
_loose = msgspec.json.Decoder()


@dataclass(frozen=True)
class LivenessConfig:
    #: How often agents are expected to beat, in seconds.
    interval: float = 5.0
    #: Heartbeats an online agent may miss before it is marked offline.
    missed: int = 3

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=self.interval * self.missed)


def parse_heartbeat(subject: str, data: bytes) -> tuple[str, str]:
    """(actor, agent_id) of a heartbeat message, or InvalidMessage."""
    parsed = parse_command_subject(subject)
    if parsed is None or not is_token(parsed.actor):
        raise InvalidMessage(codes.INVALID_SUBJECT, f"not a command subject: {subject}")
    if parsed.actor == "system":
        raise InvalidMessage(codes.NOT_AUTHORIZED, "the actor 'system' is reserved for the engine")
    if not data.strip():
        return parsed.actor, parsed.actor
    try:
        body = _loose.decode(data)
        if isinstance(body, dict) and isinstance(body.get("payload"), dict):
            body = body["payload"]  # the command envelope is welcome, and optional
        beat = msgspec.convert(body, Heartbeat)
    except msgspec.DecodeError as error:
        raise InvalidMessage(codes.MALFORMED_MESSAGE, f"body is not valid JSON: {error}") from None
    except msgspec.ValidationError as error:
        raise InvalidMessage(codes.INVALID_COMMAND, f"invalid heartbeat: {error}") from None
    return parsed.actor, beat.agent_id or parsed.actor


class LivenessMonitor:
    def __init__(
        self,
        recorder: Any,
        worker: CommandSink,
        nc: NATS,
        config: LivenessConfig | None = None,
        clock: Callable[[], datetime] = utc_now,
        replicas: int = 1,
        *,
        dead_letters: DeadLetterSink,
    ) -> None:
        #: Where its transitions go (the ``CommandSink`` port: the engine's intake).
        self.worker = worker
        self.dead_letters = dead_letters
        self.nc = nc
        self.config = config or LivenessConfig()
        self.clock = clock
        self.replicas = replicas
        self.directory = AgentDirectory(recorder)
        self.kv: KeyValue | None = None
        self.last_seen: dict[str, datetime] = {}
        self._last_put: dict[str, datetime] = {}
        self._unflushed: dict[str, datetime] = {}
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue(maxsize=100_000)
        self.dropped = 0
        self._pending: set[str] = set()
        self._started = clock()
        self._refreshing: asyncio.Future[Any] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self.beats = 0
        self.transitions = 0

    async def start(self) -> None:
        js = self.nc.jetstream()
        ttl = max(self.config.timeout.total_seconds() * 10, 300.0)
        try:
            self.kv = await js.create_key_value(bucket=BUCKET, ttl=ttl, replicas=self.replicas)
        except Exception:
            self.kv = await js.key_value(BUCKET)  # exists with other settings: use it
        await in_thread(self.directory.catch_up)
        self._started = self.clock()

    # Heartbeats -----------------------------------------------------------------------------

    async def on_heartbeat(self, msg: Msg) -> None:
        """Called in the worker's subscription: only queue it, never wait."""
        try:
            self._inbox.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _take_heartbeats(self) -> None:
        while True:
            raise_if_cancelling()  # nats-py may have swallowed a cancel (chorus.aio)
            msg = await self._inbox.get()
            try:
                reply = await self._beat(msg)
            except InvalidMessage as rejection:
                if rejection.code in (codes.MALFORMED_MESSAGE, codes.INVALID_COMMAND,
                                      codes.INVALID_SUBJECT):  # fmt: skip
                    await self.dead_letters.reject(msg, rejection)  # a broken message: dead letter
                    continue
                # A beat from an unknown, retired or foreign agent is answered, not kept:
                # a stray agent beating on must not push real dead letters out.
                reply = Reply(command_id=_command_id(msg.data), status="rejected",
                              error=ErrorInfo(code=rejection.code, message=rejection.message))  # fmt: skip
            except Exception as error:
                raise_if_cancelling()
                log.warning("heartbeat failed: %s", error)
                continue
            if msg.reply:
                with contextlib.suppress(Exception):
                    await self.nc.publish(msg.reply, _reply.encode(reply))

    async def _beat(self, msg: Msg) -> Reply:
        actor, agent_id = parse_heartbeat(msg.subject, msg.data)
        state = await self._agent(agent_id)
        if state is None:
            raise InvalidMessage(codes.AGENT_NOT_FOUND, f"agent {agent_id} is not registered")
        if actor not in (agent_id, state.owner):
            raise InvalidMessage(codes.NOT_AUTHORIZED, f"{actor} may not beat for agent {agent_id}")
        if state.status == "retired":
            raise InvalidMessage(codes.AGENT_RETIRED, f"agent {agent_id} is retired")
        now = self.clock()
        self.beats += 1
        self.last_seen[agent_id] = now
        self._store(agent_id, now)
        if state.status == "offline" and agent_id not in self._pending:
            self._pending.add(agent_id)
            command = self._command("mark_online", f"online:{agent_id}:{state.version}",
                                    MarkOnline(agent_id=agent_id, last_seen=now))  # fmt: skip
            task = asyncio.get_running_loop().create_task(self._transition(agent_id, command))
            self._in_flight.add(task)  # keep a reference until it is done
            task.add_done_callback(self._in_flight.discard)
        return Reply(
            command_id=_command_id(msg.data),
            status="accepted",
            aggregate_id=str(agent_uuid(agent_id)),
            version=state.version,
        )

    async def _agent(self, agent_id: str) -> Any:
        state = self.directory.by_id.get(agent_id)
        if state is None:
            # Perhaps registered a moment ago through another worker: read the log. Misses
            # share one read at a time, so unregistered senders cannot flood the store.
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.ensure_future(in_thread(self.directory.catch_up))
            await asyncio.shield(self._refreshing)
            state = self.directory.by_id.get(agent_id)
        return state

    def _store(self, agent_id: str, now: datetime) -> None:
        """Mark the beat for the KV writer, at most every half interval per agent."""
        previous = self._last_put.get(agent_id)
        if previous is not None and (now - previous).total_seconds() < self.config.interval / 2:
            return
        self._last_put[agent_id] = now
        self._unflushed[agent_id] = now

    async def _flush(self) -> None:
        """Write the marked beats to the KV bucket, off the heartbeat path."""
        while True:
            raise_if_cancelling()  # nats-py may have swallowed a cancel (chorus.aio)
            await asyncio.sleep(min(self.config.interval / 4, 0.5))
            pending, self._unflushed = self._unflushed, {}
            for agent_id, seen in pending.items():
                if self.kv is None:
                    break
                try:
                    await self.kv.put(liveness_key(agent_id), seen.isoformat().encode())
                except Exception as error:
                    raise_if_cancelling()
                    log.warning("liveness store unavailable: %s", error)
                    for again, at in pending.items():  # keep what was not written
                        self._unflushed.setdefault(again, at)
                    break

    async def _stored(self, agent_id: str) -> datetime | None:
        if self.kv is None:
            return None
        try:
            entry = await self.kv.get(liveness_key(agent_id))
        except KeyNotFoundError:
            return None
        return datetime.fromisoformat(entry.value.decode()) if entry.value else None

    # Sweeps ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take heartbeats, flush them to KV, and sweep, until cancelled."""
        helpers = [asyncio.create_task(self._take_heartbeats(), name="liveness-heartbeats"),
                   asyncio.create_task(self._flush(), name="liveness-kv")]  # fmt: skip
        pause = min(self.config.interval / 2, 1.0)
        try:
            while True:
                raise_if_cancelling()
                for helper in helpers:
                    if helper.done():
                        helper.result()  # a helper that died takes the monitor down
                try:
                    await self.sweep()
                except Exception as error:
                    raise_if_cancelling()
                    log.warning("liveness sweep failed, retrying: %s", error)
                await asyncio.sleep(pause)
        finally:
            for task in (*helpers, *self._in_flight):
                task.cancel()
            await asyncio.gather(*helpers, *self._in_flight, return_exceptions=True)

    async def sweep(self) -> int:
        """Mark offline every online agent silent for longer than the timeout."""
        agents = await in_thread(self.directory.catch_up)
        now = self.clock()
        if now - self._started < self.config.timeout:
            return 0  # just started: give live agents the time to beat again
        marked = 0
        for agent_id, state in list(agents.items()):
            if state.status != "online" or agent_id in self._pending:
                continue
            last = max(filter(None, (self.last_seen.get(agent_id), state.last_seen)))
            if now - last <= self.config.timeout:
                continue
            stored = await self._stored(agent_id)  # another worker may have seen it
            if stored is not None and stored > last:
                self.last_seen[agent_id] = last = stored
                if now - last <= self.config.timeout:
                    continue
            missed = int((now - last).total_seconds() // self.config.interval)
            self._pending.add(agent_id)
            command = self._command(
                "mark_offline", f"offline:{agent_id}:{state.version}",
                MarkOffline(agent_id=agent_id, last_seen=last, missed_heartbeats=missed),
            )  # fmt: skip
            await self._transition(agent_id, command)
            marked += 1
        return marked

    async def _transition(self, agent_id: str, command: Command) -> None:
        try:
            reply = await self.worker.submit(command)
            if reply.status == "accepted":
                self.transitions += 1
            # Read our own write, so the next beat or sweep sees the new status.
            await in_thread(self.directory.catch_up)
        finally:
            self._pending.discard(agent_id)

    @staticmethod
    def _command(name: str, command_id: str, payload: Any) -> Command:
        return Command(
            actor="system",
            handler=HANDLERS[("agent", name)],
            envelope=Envelope(command_id=command_id, payload=payload),
        )


def _command_id(data: bytes) -> str:
    with contextlib.suppress(Exception):
        body = _loose.decode(data)
        if isinstance(body, dict) and isinstance(body.get("command_id"), str):
            return str(body["command_id"])[:200]
    return ""
