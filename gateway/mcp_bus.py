"""Tool calls over the bus: ``chorus.cmd.<actor>.tool.call``, answered by the gateways.

The engine takes every other ``chorus.cmd.>`` subject but leaves this one alone: a tool
call may take minutes or hang, and nothing that slow belongs in the engine's command path.
Every gateway subscribes in the queue group ``chorus-tools`` and runs each call in a task of
its own, so a hanging server costs its caller a timeout and holds up no other call. A call
goes through ``run_tool_call``, the HTTP route's own path: arguments checked against the
recorded schema, access, rate limit, the server's timeout, and the ``ToolCalled`` record.

The caller is the subject's actor: NATS permissions let a key holder publish only
``chorus.cmd.<its id>.>``, so nobody calls as someone else. Its role comes from the key
store, as the engine's does (an actor that never held a key counts as an agent; one whose
keys were all revoked has none and may call nothing).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import msgspec
from chorus.aio import raise_if_cancelling
from chorus.contracts import errors as codes
from chorus.contracts.bounds import check_command_bytes
from chorus.contracts.envelope import Envelope
from chorus.contracts.errors import ErrorInfo
from chorus.contracts.mcp import CallTool, ToolCallOutcome, ToolCallReply
from chorus.contracts.roles import is_reserved
from chorus.contracts.subjects import (
    TOOL_AGGREGATE,
    TOOL_CALLS,
    TOOL_QUEUE,
    command_subject,
    parse_command_subject,
)
from chorus.gateway.errors import Problem
from chorus.gateway.keys import KeyStore, Principal
from chorus.gateway.mcp_registry import CallBody, run_tool_call
from chorus.gateway.state import Services
from chorus.projections import mcp as read_model
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(Envelope[CallTool])
_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(ToolCallReply)
#: The strongest role first: an actor holding several keys calls with the most it may.
_ROLE_ORDER = ("admin", "operator", "agent")
#: How much longer than the server's own timeout a caller waits for the answer (the call
#: is recorded through the engine after it ends).
ANSWER_GRACE_SECONDS = 15.0


class InFlight:
    """How many calls each actor has running in this gateway: a bound per actor, so an
    agent that floods the subject cannot make the gateway start servers without end (the
    server's ``calls_per_minute`` bounds the rate; this bounds what runs at once)."""

    def __init__(self, per_actor: int = 8) -> None:
        self.per_actor = per_actor
        self._running: dict[str, int] = {}

    def admit(self, actor: str) -> bool:
        if self._running.get(actor, 0) >= self.per_actor:
            return False
        self._running[actor] = self._running.get(actor, 0) + 1
        return True

    def release(self, actor: str) -> None:
        left = self._running.get(actor, 0) - 1
        if left > 0:
            self._running[actor] = left
        else:
            self._running.pop(actor, None)


def _refusal(command_id: str, code: str, message: str, details: Any = None) -> ToolCallReply:
    return ToolCallReply(command_id=command_id, status="rejected",
                         error=ErrorInfo(code=code, message=message, details=details))  # fmt: skip


class ToolCallService:
    """The gateway's subscriber for ``chorus.cmd.*.tool.call``."""

    def __init__(self, services: Services, keys: KeyStore, per_actor: int = 8) -> None:
        self.services = services
        self.keys = keys
        self.in_flight = InFlight(per_actor)
        self._sub: Subscription | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self.services.nc.subscribe(
            TOOL_CALLS, queue=TOOL_QUEUE, cb=self._on_message
        )
        await self.services.nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _on_message(self, msg: Msg) -> None:
        if not msg.reply:
            return  # nobody to answer: a call is only ever made as a request
        parsed = parse_command_subject(msg.subject)
        actor = parsed.actor if parsed is not None else ""
        if not self.in_flight.admit(actor):
            busy = _refusal("", codes.RATE_LIMITED,
                            f"{actor} has {self.in_flight.per_actor} tool calls running here; "
                            "wait for one to end", {"retry_after": 1})  # fmt: skip
            await self._publish(msg, busy)
            return
        # Never awaited here: the subscription's callbacks run one after another.
        task = asyncio.create_task(self._answer(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(lambda _: self.in_flight.release(actor))

    async def _answer(self, msg: Msg) -> None:
        await self._publish(msg, await self.handle(msg.subject, msg.data))

    async def _publish(self, msg: Msg, reply: ToolCallReply) -> None:
        try:
            await self.services.nc.publish(msg.reply, _encoder.encode(reply))
        except Exception as error:  # the caller went away; the call is recorded anyway
            raise_if_cancelling()
            log.warning("could not answer a tool call on %s: %s", msg.subject, error)

    async def handle(self, subject: str, data: bytes) -> ToolCallReply:
        """The answer to one raw call: every failure is a refusal with a stable code."""
        parsed = parse_command_subject(subject)
        if parsed is None or parsed.command != "call":
            return _refusal("", codes.UNKNOWN_COMMAND, f"unknown command on {subject}",
                            {"known": ["tool.call"]})  # fmt: skip
        if violation := check_command_bytes(data):
            return _refusal("", violation.code, violation.message, violation.details)
        try:
            envelope = _decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            return _refusal("", codes.INVALID_COMMAND, str(error))
        command_id = envelope.command_id
        try:
            principal = self.principal_of(parsed.actor)
            call = envelope.payload
            outcome = await run_tool_call(
                principal, self.services, call.server, call.tool,
                CallBody(arguments=call.arguments, task_id=call.task_id),
            )  # fmt: skip
        except Problem as problem:
            return _refusal(command_id, problem.code, problem.detail, problem.details)
        except Exception:
            raise_if_cancelling()
            log.exception("tool call on %s failed", subject)
            return _refusal(
                command_id, codes.INTERNAL_ERROR, "the call failed; see the gateway log"
            )
        return ToolCallReply(command_id=command_id, status="ok", result=outcome)

    def principal_of(self, actor: str) -> Principal:
        if is_reserved(actor):
            raise Problem(403, codes.NOT_AUTHORIZED, f"the actor {actor!r} is reserved")
        roles = self.keys.roles_of(actor)
        role = "agent" if roles is None else next((r for r in _ROLE_ORDER if r in roles), None)
        if role is None:
            raise Problem(403, codes.NOT_AUTHORIZED, f"{actor} holds no active key")
        return Principal(actor=actor, role=role, key_id="bus", via="bus")


async def call_over_bus(
    nc: NATS, services: Services, actor: str, call: CallTool
) -> ToolCallOutcome:
    """Send a tool call as ``actor`` (``chorus mcp`` does: the process holds no server
    secrets and cannot record calls) and wait for the gateway's answer; a refusal raises
    the Problem the HTTP route would."""
    view = await services.read(read_model.get_server, call.server)
    if view is None:
        raise Problem(
            404, codes.MCP_SERVER_NOT_FOUND, f"MCP server {call.server!r} is not registered"
        )
    timeout = float(view.config.get("timeout_seconds", 30.0)) + ANSWER_GRACE_SECONDS
    body = _encoder.encode(Envelope(command_id=uuid.uuid4().hex, payload=call))
    try:
        msg = await nc.request(
            command_subject(actor, TOOL_AGGREGATE, "call"), body, timeout=timeout
        )
    except (NoRespondersError, NatsTimeout):
        raise Problem(503, codes.MCP_SERVER_UNAVAILABLE,
                      "no gateway answered the tool call; is the gateway running?",
                      headers={"Retry-After": "1"}) from None  # fmt: skip
    reply = _reply_decoder.decode(msg.data)
    if reply.error is not None:
        error = reply.error
        raise Problem(codes.HTTP_STATUS.get(error.code, 500), error.code, error.message,
                      details=error.details)  # fmt: skip
    assert reply.result is not None
    return reply.result
