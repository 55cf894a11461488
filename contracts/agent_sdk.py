"""A small agent SDK over nats-py: what every Chorus agent does, done right once.

    async with AgentClient(nc, "coder-7", heartbeat_interval=5) as agent:
        await agent.register(capabilities=["python"])
        reply = await agent.submit_result(session_id, {"patch": "..."})
        verdict = await agent.verify_completion(session_id, {"patch": "..."})

While open, the client heartbeats on ``chorus.cmd.<id>.agent.heartbeat`` and answers
health checks on ``chorus.agent.<id>.ping``. Every command carries a fresh command id and
is re-sent with that same id while no engine answers (a timeout, or "no responders" while
an engine restarts), so a retry is never applied twice. Agents in other languages can do
the same from the JSON Schema and AsyncAPI that ``chorus schema`` writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from contracts.agents import result_hash
from contracts.aio import raise_if_cancelling
from contracts.envelope import Envelope, Reply
from contracts.subjects import agent_ping_subject, command_subject

_encoder = msgspec.json.Encoder()
_reply = msgspec.json.Decoder(Reply)


class AgentClient:
    def __init__(
        self,
        nc: NATS,
        agent_id: str,
        *,
        heartbeat_interval: float = 5.0,
        request_timeout: float = 5.0,
        give_up_after: float = 60.0,
    ) -> None:
        self.nc = nc
        self.agent_id = agent_id
        self.heartbeat_interval = heartbeat_interval
        self.request_timeout = request_timeout
        self.give_up_after = give_up_after
        self._beating: asyncio.Task[None] | None = None
        self._pings: Subscription | None = None
        self._submitted_at: dict[str, datetime] = {}  # task -> when its result was sent

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
                msg = await self.nc.request(subject, body, timeout=self.request_timeout)
                return _reply.decode(msg.data)
            except (NoRespondersError, NatsTimeout):
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
    ) -> Reply:
        payload = {"name": self.agent_id, "type": type,
                   "capabilities": capabilities or [], "metadata": metadata or {}}  # fmt: skip
        return await self.send("agent", "register", payload)

    async def submit_result(
        self,
        session_id: str,
        result: dict[str, Any],
        *,
        success: bool = True,
        output_hash: str | None = None,
    ) -> Reply:
        payload: dict[str, Any] = {"session_id": session_id, "result": result, "success": success}
        if output_hash is not None:
            payload["output_hash"] = output_hash
        done = datetime.now(UTC)
        reply = await self.send("session", "submit_result", payload)
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
        return await self.send("agent", "verify_completion", payload)

    # Liveness -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Heartbeat and answer health checks until ``stop``."""
        self._pings = await self.nc.subscribe(agent_ping_subject(self.agent_id), cb=self._pong)
        self._beating = asyncio.create_task(self._beat(), name=f"heartbeat-{self.agent_id}")

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            self._beating = None
        if self._pings is not None:
            with contextlib.suppress(Exception):
                await self._pings.unsubscribe()
            self._pings = None

    async def _beat(self) -> None:
        subject = command_subject(self.agent_id, "agent", "heartbeat")
        while True:
            try:
                await self.nc.publish(subject, b"")
            except Exception:
                raise_if_cancelling()  # disconnected: nats-py reconnects, keep beating
            await asyncio.sleep(self.heartbeat_interval)

    async def _pong(self, msg: Msg) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, _encoder.encode({"agent_id": self.agent_id}))

    async def __aenter__(self) -> AgentClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
