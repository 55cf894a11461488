"""Publishing commands to the engine and turning its replies into HTTP outcomes.

A route that changes something is send -> wait -> read: ``issue_command`` sends the
caller's command (as its actor, with its ``Idempotency-Key`` and ``X-Correlation-Id``) and
waits until the read model the route answers from shows the change; the route then reads
and answers, with ``replayed(reply)`` among its headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import msgspec
from chorus.contracts import errors as codes
from chorus.contracts import logcontext
from chorus.contracts.bounds import MAX_COMMAND_BYTES, check_command_bytes
from chorus.contracts.envelope import Envelope, Reply
from chorus.contracts.subjects import command_subject
from chorus.contracts.tracing import inject
from chorus.gateway.errors import Problem
from litestar import Request
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry.trace import SpanKind, Tracer

_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(Reply)


class CommandBus:
    def __init__(
        self, nc: NATS, timeout: float = 10.0, no_responders_grace: float = 3.0,
        tracer: Tracer | None = None,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.tracer = tracer
        self.timeout = timeout
        self.no_responders_grace = no_responders_grace

    async def send(
        self,
        actor: str,
        aggregate: str,
        command: str,
        payload: msgspec.Struct,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Reply:
        """Request/reply with the engine. Raises Problem for rejections and outages."""
        envelope = Envelope(
            command_id=command_id or uuid.uuid4().hex,
            payload=payload,
            correlation_id=correlation_id,
        )
        with logcontext.bound(command_id=envelope.command_id, correlation_id=correlation_id):
            return await self.exchange(command_subject(actor, aggregate, command),
                                       _encoder.encode(envelope))  # fmt: skip

    async def exchange(self, subject: str, body: bytes) -> Reply:
        """Send ``body`` to a command subject and decode the engine's Reply (for commands
        whose body is not an envelope, such as heartbeats). Raises Problem like ``send``."""
        limit = min(MAX_COMMAND_BYTES, self.nc.max_payload or MAX_COMMAND_BYTES)
        if violation := check_command_bytes(body, limit):
            # The engine would refuse it too; a body over the payload limit could not
            # even be sent.
            raise Problem(
                codes.HTTP_STATUS[violation.code], violation.code, violation.message,
                details=violation.details,
            )  # fmt: skip
        try:
            msg = await self._request(subject, body)
        except NoRespondersError:
            raise Problem(
                503, codes.ENGINE_UNAVAILABLE, "no engine is running to take commands; retry later",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
        except NatsTimeout:
            raise Problem(
                503, codes.ENGINE_UNAVAILABLE,
                "the engine did not answer in time; retry with the same Idempotency-Key",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
        reply = _reply_decoder.decode(msg.data)
        if reply.status == "rejected":
            error = reply.error
            assert error is not None
            raise Problem(
                # A code this gateway does not know yet is the engine's fault, not the client's.
                codes.HTTP_STATUS.get(error.code, 500),
                error.code,
                error.message,
                details=error.details,
            )
        return reply

    async def _request(self, subject: str, body: bytes) -> Any:
        """One request, retried while no engine listens (for up to ``no_responders_grace``).

        Right after an engine (re)starts, the server may briefly report no responders;
        the command id is the same on every try, so retrying can never act twice.
        """
        deadline = time.monotonic() + self.no_responders_grace
        delay = 0.05
        with self._traced(subject) as headers:
            while True:
                try:
                    return await self.nc.request(
                        subject, body, timeout=self.timeout, headers=headers
                    )
                except NoRespondersError:
                    if time.monotonic() + delay > deadline:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)

    @contextmanager
    def _traced(self, subject: str) -> Iterator[dict[str, str] | None]:
        """A client span around the request, its W3C context in the message headers."""
        if self.tracer is None:
            yield None
            return
        ids = logcontext.current()
        with self.tracer.start_as_current_span(
            "chorus.command send", kind=SpanKind.CLIENT,
            attributes={"messaging.system": "nats", "messaging.destination.name": subject,
                        "chorus.command_id": ids.get("command_id", ""),
                        "chorus.correlation_id": ids.get("correlation_id", "")},
        ) as span:  # fmt: skip
            yield inject({}, span)


def idempotency_key(headers: Any) -> str | None:
    """``Idempotency-Key`` becomes the command id, so a retried POST never acts twice."""
    value = headers.get("idempotency-key")
    if value is None:
        return None
    value = value.strip()
    if not 1 <= len(value) <= 200:
        raise Problem(400, "invalid_idempotency_key", "Idempotency-Key must be 1-200 characters")
    return str(value)


def derived_id(actor: str, kind: str, command_id: str | None) -> str:
    """The id of what a create command makes: derived from the Idempotency-Key when one is
    given (so a retried POST names the same aggregate), else random. Either way a version 4
    UUID: the engine refuses clients any other kind (those are the engine's own ids)."""
    if command_id is None:
        return str(uuid.uuid4())
    digest = hashlib.sha256(f"{actor}/{kind}/{command_id}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


async def issue(
    bus: CommandBus, headers: Any, actor: str, aggregate: str, command: str,
    payload: msgspec.Struct,
) -> Reply:  # fmt: skip
    """Send an HTTP caller's command: as its actor, its ``Idempotency-Key`` the command id
    (a retried POST never acts twice) and its ``X-Correlation-Id`` carried along. Every
    route that issues a command goes through here, so none forgets either header."""
    return await bus.send(
        actor, aggregate, command, payload,
        command_id=idempotency_key(headers), correlation_id=headers.get("x-correlation-id"),
    )  # fmt: skip


class CommandServices(Protocol):
    """What ``issue_command`` needs of the gateway's services."""

    @property
    def bus(self) -> CommandBus: ...

    async def read_your_write(self, name: str, position: int, **details: Any) -> None: ...


async def issue_command(
    services: CommandServices,
    request: Request[Any, Any, Any],
    aggregate: str,
    command: str,
    payload: msgspec.Struct,
    *,
    read_model: str | None = None,
    **details: Any,
) -> Reply:
    """Send the caller's command (``issue``) and, with ``read_model``, wait until that read
    model shows it (``read_your_write``: 503 ``read_model_behind`` with ``details`` if it
    does not in time), so what the route reads next includes the change."""
    reply = await issue(services.bus, request.headers, request.user.actor, aggregate, command,
                        payload)  # fmt: skip
    if read_model is not None:
        await services.read_your_write(read_model, reply.position, **details)
    return reply


def replayed(reply: Reply) -> dict[str, str]:
    """``Idempotent-Replayed: true`` when the engine answered from an earlier identical
    command (the same Idempotency-Key): the response describes that one."""
    return {"Idempotent-Replayed": "true"} if reply.status == "duplicate" else {}
