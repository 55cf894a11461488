"""The Python agent SDK: what every Chorus agent does, done right once.

A worker that takes tasks from its inbox (on a FastStream broker, see ``chorus.agent_worker``):

    agent = AgentClient.connect("nats://...", "coder-7")

    async def handle(task: PhaseTask | SessionTask, ctx: TaskContext) -> dict[str, Any]:
        await ctx.progress(50)
        return {"patch": "..."}            # completes the phase; an exception fails it

    await agent.serve(handle, capabilities=["python"], max_concurrency=2)

Or single commands, on a FastStream ``NatsBroker`` or a plain nats-py client:

    async with AgentClient(nc, "coder-7", heartbeat_interval=5) as agent:
        await agent.register(capabilities=["python"])
        reply = await agent.submit_result(session_id, {"patch": "..."})

While open, the client heartbeats on ``chorus.cmd.<id>.agent.heartbeat`` and answers
health checks on ``chorus.agent.<id>.ping``. Every command carries a fresh command id and
is re-sent with that same id while no engine answers (a timeout, or "no responders" while
an engine restarts), so a retry is never applied twice. Agents in other languages can do
the same from the JSON Schema and AsyncAPI that ``chorus schema`` writes.

The SDK lives beside the CLI rather than in ``contracts``: contracts are the wire format
alone, and this module runs tasks, spawns nothing of the engine, and imports only
contracts (an import-linter contract keeps it so), so an agent process stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec
from chorus.aio import raise_if_cancelling
from chorus.contracts.agents import result_hash
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.subjects import agent_inbox_prefix, agent_ping_subject, command_subject
from faststream.exceptions import IncorrectState, SubscriberNotFound
from faststream.nats import NatsBroker, NatsMessage
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

if TYPE_CHECKING:
    from chorus.agent_worker import Handler

_encoder = msgspec.json.Encoder()
_reply = msgspec.json.Decoder(Reply)

#: What "no engine answered" looks like on a real server and on FastStream's test broker.
UNANSWERED: tuple[type[Exception], ...] = (NoRespondersError, TimeoutError, SubscriberNotFound)


class Bus(Protocol):
    """The two things an agent does on NATS besides listening: ask and tell."""

    async def request(self, subject: str, body: bytes, timeout: float) -> bytes: ...

    async def publish(self, subject: str, body: bytes) -> None: ...

    def connection(self) -> NATS | None: ...


class ClientBus:
    """A plain nats-py connection."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc

    async def request(self, subject: str, body: bytes, timeout: float) -> bytes:
        return (await self.nc.request(subject, body, timeout=timeout)).data

    async def publish(self, subject: str, body: bytes) -> None:
        await self.nc.publish(subject, body)

    def connection(self) -> NATS:
        return self.nc


class BrokerBus:
    """A FastStream broker: in tests, ``TestNatsBroker`` routes these in memory.

    On a connected broker, commands go straight through the broker's own nats-py
    connection (``broker.connection``): a command and its reply are opaque bytes, and
    FastStream's publish path (middlewares, a parsed ``StreamMessage`` per reply) costs
    more CPU per request for nothing an agent uses. Without a real connection (the test
    broker) they take the broker's path.
    """

    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker

    def connection(self) -> NATS | None:
        """The broker's nats-py connection, or None (not connected yet, or a test broker)."""
        try:
            connection = self.broker.connection
        except IncorrectState:  # not connected yet
            return None
        return connection if isinstance(connection, NATS) else None

    async def request(self, subject: str, body: bytes, timeout: float) -> bytes:
        nc = self.connection()
        if nc is not None:
            return (await nc.request(subject, body, timeout=timeout)).data
        return bytes((await self.broker.request(body, subject, timeout=timeout)).body)

    async def publish(self, subject: str, body: bytes) -> None:
        nc = self.connection()
        if nc is not None:
            await nc.publish(subject, body)
            return
        await self.broker.publish(body, subject)


class AgentClient:
    """One agent's side of the bus: commands, liveness, and (on a broker) ``serve``."""

    def __init__(
        self,
        bus: NATS | NatsBroker,
        agent_id: str,
        *,
        heartbeat_interval: float = 5.0,
        request_timeout: float = 5.0,
        give_up_after: float = 60.0,
    ) -> None:
        self.broker = bus if isinstance(bus, NatsBroker) else None
        self.bus: Bus = BrokerBus(bus) if isinstance(bus, NatsBroker) else ClientBus(bus)
        self._nc = None if isinstance(bus, NatsBroker) else bus
        self.agent_id = agent_id
        self.heartbeat_interval = heartbeat_interval
        self.request_timeout = request_timeout
        self.give_up_after = give_up_after
        self._beating: asyncio.Task[None] | None = None
        self._pings: Any = None  # a nats-py Subscription or a FastStream subscriber
        self._submitted_at: dict[str, datetime] = {}  # task -> when its result was sent

    @classmethod
    def connect(
        cls, url: str | Sequence[str], agent_id: str, *, key: str | None = None, **options: Any
    ) -> AgentClient:
        """A client on a new FastStream broker for ``url`` (connected by ``serve``).

        ``key`` is the agent's API key, which is also its bus credential (user: the key's id,
        password: the key); with it the client takes replies on the agent's own inbox prefix,
        the only one the bus lets it read. The broker logs each message at DEBUG, so an
        agent's log stays quiet by default.
        """
        extra: dict[str, Any] = {}
        if key is not None:
            urls = [url] if isinstance(url, str) else list(url)
            url = [bus_url(u, key) for u in urls]
            extra["inbox_prefix"] = agent_inbox_prefix(agent_id)
        broker = NatsBroker(url, log_level=logging.DEBUG, name=f"chorus-agent-{agent_id}", **extra)
        return cls(broker, agent_id, **options)

    def connection(self) -> NATS | None:
        """The nats-py connection under this client (None: a broker not connected yet, or
        FastStream's in-memory test broker)."""
        return self.bus.connection()

    # Commands -------------------------------------------------------------------------------

    async def send(
        self, aggregate: str, command: str, payload: dict[str, Any], command_id: str | None = None
    ) -> Reply:
        """One command as this agent; re-sent with the same id until an engine answers."""
        body = _encoder.encode(Envelope(command_id=command_id or uuid.uuid4().hex, payload=payload))
        subject = command_subject(self.agent_id, aggregate, command)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_after
        while True:
            try:
                return _reply.decode(await self.bus.request(subject, body, self.request_timeout))
            except UNANSWERED:
                raise_if_cancelling()
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def register(
        self,
        *,
        type: str = "generic",
        capabilities: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        max_concurrency: int | None = None,
    ) -> Reply:
        payload: dict[str, Any] = {"name": self.agent_id, "type": type,
                                   "capabilities": capabilities or [], "metadata": metadata or {}}  # fmt: skip
        if max_concurrency is not None:
            payload["max_concurrency"] = max_concurrency
        return await self.send("agent", "register", payload)

    async def accept(self, task_id: str, command_id: str | None = None) -> Reply:
        """Acknowledge a task: the engine stops re-sending it (accepting a phase starts it)."""
        return await self.send("task", "accept", {"task_id": task_id}, command_id)

    async def submit_result(
        self,
        session_id: str,
        result: dict[str, Any],
        *,
        success: bool = True,
        output_hash: str | None = None,
        command_id: str | None = None,
    ) -> Reply:
        payload: dict[str, Any] = {"session_id": session_id, "result": result, "success": success}
        if output_hash is not None:
            payload["output_hash"] = output_hash
        done = datetime.now(UTC)
        reply = await self.send("session", "submit_result", payload, command_id)
        if reply.status != "rejected":
            self._submitted_at[session_id] = done
            while len(self._submitted_at) > 10_000:  # remember the recent ones only
                del self._submitted_at[next(iter(self._submitted_at))]
        return reply

    async def verify_completion(
        self,
        task_id: str,
        result: dict[str, Any] | None = None,
        *,
        output_hash: str | None = None,
        completion_time: datetime | None = None,
        response_time: float | None = None,
    ) -> Reply:
        """Claim the task done: the hash is ``output_hash``, else that of ``result``. The
        completion time defaults to when this client submitted the task's result, else
        now."""
        claim = self.claim(task_id, result, output_hash=output_hash,
                           completion_time=completion_time, response_time=response_time)  # fmt: skip
        return await self.send("agent", "verify_completion", claim)

    async def verify_completions(self, claims: list[dict[str, Any]]) -> Reply:
        """Several claims (each made by ``claim``) in one command: a verdict for each."""
        payload = {"agent_id": self.agent_id, "claims": claims}
        return await self.send("agent", "verify_completions", payload)

    def claim(
        self,
        task_id: str,
        result: dict[str, Any] | None = None,
        *,
        output_hash: str | None = None,
        completion_time: datetime | None = None,
        response_time: float | None = None,
    ) -> dict[str, Any]:
        """One claim's payload, as ``verify_completion`` sends it."""
        if output_hash is None:
            if result is None:
                raise ValueError("give the result or its output_hash")
            output_hash = result_hash(result)
        payload: dict[str, Any] = {
            "agent_id": self.agent_id,
            "task_id": task_id,
            "completion_time": (
                completion_time or self._submitted_at.get(task_id) or datetime.now(UTC)
            ).isoformat(),
            "output_hash": output_hash,
        }
        if response_time is not None:
            payload["response_time"] = response_time
        return payload

    # Tasks ----------------------------------------------------------------------------------

    async def serve(
        self,
        handler: Handler,
        *,
        capabilities: list[str] | None = None,
        max_concurrency: int = 1,
        type: str = "generic",
        metadata: dict[str, Any] | None = None,
        drain_timeout: float = 30.0,
        claim_completions: bool = True,
        keepalive: bool = False,
        accept_after: float | None = None,
    ) -> None:
        """Register, heartbeat, and run ``handler`` for every task on this agent's inbox,
        until cancelled or ``shutdown()``; then finish the running tasks (for up to
        ``drain_timeout`` seconds) or hand them back. ``claim_completions``: claim each
        completed task with its evidence; ``keepalive``: while a handler runs, repeat its
        last progress report often enough for the phase's ``heartbeat_seconds``;
        ``accept_after``: accept a task once its handler has run this long (default
        ``ACCEPT_AFTER``, 0.25 s; a quicker handler's report acknowledges it; 0: accept
        before running). See ``chorus.agent_worker``."""
        from chorus.agent_worker import ACCEPT_AFTER, Worker

        if self.broker is None:
            raise TypeError("serve() needs a FastStream broker: AgentClient.connect(url, name)")
        worker = Worker(self, self.broker, handler, max_concurrency=max_concurrency,
                        claim_completions=claim_completions, keepalive=keepalive,
                        accept_after=ACCEPT_AFTER if accept_after is None else accept_after)  # fmt: skip
        self._worker = worker
        await worker.run(
            capabilities=capabilities or [],
            type=type,
            metadata=metadata or {},
            drain_timeout=drain_timeout,
        )

    def shutdown(self) -> None:
        """Ask a running ``serve`` to stop taking tasks and return once they are done."""
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.shutdown()

    # Liveness -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Heartbeat and answer health checks until ``stop``."""
        subject = agent_ping_subject(self.agent_id)
        if self.broker is not None:
            if not self.broker.running:
                await self.broker.start()  # connects
            subscriber = self.broker.subscriber(subject, persistent=False)
            subscriber(self._broker_pong)
            await subscriber.start()
            self._pings = subscriber
        else:
            assert self._nc is not None
            self._pings = await self._nc.subscribe(subject, cb=self._pong)
        self._beating = asyncio.create_task(self._beat(), name=f"heartbeat-{self.agent_id}")

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            self._beating = None
        if self._pings is not None:
            with contextlib.suppress(Exception):
                if self.broker is not None:
                    await self._pings.stop()
                else:
                    await self._pings.unsubscribe()
            self._pings = None

    async def _beat(self) -> None:
        subject = command_subject(self.agent_id, "agent", "heartbeat")
        while True:
            try:
                await self.bus.publish(subject, b"")
            except Exception:
                raise_if_cancelling()  # disconnected: the client reconnects, keep beating
            await asyncio.sleep(self.heartbeat_interval)

    def _pong_body(self) -> bytes:
        return _encoder.encode({"agent_id": self.agent_id})

    async def _pong(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(self._pong_body())

    async def _broker_pong(self, msg: NatsMessage) -> bytes:
        return self._pong_body()

    async def __aenter__(self) -> AgentClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def bus_url(url: str, key: str) -> str:
    """``url`` with an API key as its bus credential: user is the key's id, password the key."""
    parts = urlsplit(url)
    user = key.split("_")[1] if key.count("_") >= 2 else key
    netloc = f"{quote(user, safe='')}:{quote(key, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
