"""The command worker: NATS requests in, micro-batches through the processor, replies out.

Workers share the queue group ``chorus-engine``: each command reaches one worker. A worker
takes what arrived within ``batch_window`` seconds (up to ``batch_max`` commands), hands the
batch to the processor in its single writer thread, and answers each request once the
batch's transaction has committed. Invalid messages are answered ``rejected`` at once and
copied to ``chorus.dlq.<reason>``; they never reach the processor or stall the batch.
Bounds (size, nesting depth, integer range: ``chorus.contracts.bounds``) are checked on the raw
bytes before anything decodes them, heartbeats included. With partitions
(``chorus.engine.adapters.partitioned``) a worker decides only the commands of the partitions
it owns and passes the others on to their owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
from chorus.aio import raise_if_cancelling
from chorus.contracts import errors as codes
from chorus.contracts.agents import ENGINE_ONLY
from chorus.contracts.bounds import check_command_bytes
from chorus.contracts.envelope import Reply
from chorus.contracts.errors import ErrorInfo
from chorus.contracts.mcp import RECORDER
from chorus.contracts.roles import is_reserved
from chorus.contracts.subjects import (
    CMD_PREFIX,
    COMMAND_SUBJECT_HEADER,
    COMMITTED,
    ENGINE_QUEUE,
    dlq_subject,
    is_token,
    is_tool_call,
    parse_command_subject,
)
from chorus.contracts.tracing import extract
from chorus.engine.adapters import metrics
from chorus.engine.adapters.partitioned import PartitionRouting, PartitionSubscriptions
from chorus.engine.adapters.prefetch import Prefetcher
from chorus.engine.adapters.ratelog import RateLimitedLog
from chorus.engine.adapters.tracing import TracedBatch
from chorus.engine.handlers import DECODERS, HANDLERS
from chorus.engine.ports import CommitListener, DeadLetterSink, HeartbeatSink
from chorus.engine.processor import Command, Processor
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError
from opentelemetry.context import Context
from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

HEARTBEAT_SUFFIX = ".agent.heartbeat"
_reply_encoder = msgspec.json.Encoder()
_loose_decoder = msgspec.json.Decoder()
#: A dead letter keeps at most this much of the message (the DLQ stream is capped too).
DEAD_LETTER_BYTES = 64 * 1024
#: The longest a cold aggregate's fold waits for a quiet moment of the writer (seconds).
FOLD_DELAY = 0.02


@dataclass
class Incoming:
    """A command waiting for its batch: from NATS (with a reply subject) or from a timer."""

    command: Command
    reply_to: str | None
    done: asyncio.Future[Reply] | None = None
    arrived: float = field(default_factory=time.monotonic)
    #: The W3C trace context the message carried (only when the engine traces).
    trace: Context | None = None
    received_ns: int = field(default_factory=time.time_ns)
    #: Its partition, counted in flight until answered (None: not partitioned).
    partition: int | None = None


class InvalidMessage(Exception):
    """A message failed edge validation."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def parse_message(subject: str, data: bytes, *, trusted: bool = False) -> Command:
    """Validate a raw command message into a typed Command, or raise InvalidMessage.

    ``trusted``: another engine passed it on (an engine-only partition subject), having
    checked it here first, or one of its process managers issued it: its actor may be
    reserved and its command engine-only."""
    parsed = parse_command_subject(subject)
    if parsed is None or not is_token(parsed.actor):
        raise InvalidMessage(codes.INVALID_SUBJECT, f"not a command subject: {subject}")
    key = (parsed.aggregate, parsed.command)
    if violation := check_command_bytes(data):
        raise InvalidMessage(violation.code, violation.message, violation.details)
    if is_reserved(parsed.actor) and parsed.actor != RECORDER and not trusted:
        # Only the engine's own timers and process managers act as "system", and they do
        # not come over the bus; no spelling of a reserved name passes for them. The
        # gateway records tool calls as itself (on a secured bus only its service user can).
        raise InvalidMessage(codes.NOT_AUTHORIZED, f"the actor {parsed.actor!r} is reserved")
    handler = HANDLERS.get(key)
    if handler is None or (key in ENGINE_ONLY and not trusted):
        known = sorted(f"{a}.{c}" for a, c in HANDLERS if (a, c) not in ENGINE_ONLY)
        raise InvalidMessage(
            codes.UNKNOWN_COMMAND,
            f"unknown command {parsed.aggregate}.{parsed.command}",
            {"known": known},
        )
    try:
        envelope = DECODERS[key].decode(data)
    except msgspec.ValidationError as error:
        message = str(error)
        if message.startswith("Expected `object`") and "at `$." not in message:
            raise InvalidMessage(
                codes.MALFORMED_MESSAGE, f"body must be a JSON object: {message}"
            ) from None
        raise InvalidMessage(codes.INVALID_COMMAND, message, _error_path(message)) from None
    except msgspec.DecodeError as error:
        raise InvalidMessage(codes.MALFORMED_MESSAGE, f"body is not valid JSON: {error}") from None
    except RecursionError:  # the bounds above should have caught it; never a traceback
        raise InvalidMessage(codes.NESTING_TOO_DEEP, "JSON nested too deeply") from None
    if handler.resolve is not None:  # the payload says which aggregate takes it
        handler = handler.resolve(envelope.payload)
    return Command(actor=parsed.actor, handler=handler, envelope=envelope)


def _error_path(message: str) -> dict[str, Any] | None:
    """msgspec says ``... - at `$.payload.x` ``: expose the path as a field name.

    For an unknown field the path names its object; the field itself is appended.
    """
    where = message.rsplit("at `$", 1)[1].rstrip("`").lstrip(".") if "at `$" in message else ""
    if "unknown field `" in message:
        name = message.split("unknown field `", 1)[1].split("`", 1)[0]
        where = f"{where}.{name}" if where else name
    return {"field": where} if where else None


def _log_fields(command: Command) -> dict[str, str | None]:
    """The request fields of a command's log lines (as the gateway's lines name them)."""
    envelope = command.envelope
    return {"command_id": envelope.command_id, "correlation_id": envelope.correlation_id,
            "actor": command.actor}  # fmt: skip


def _command_id_of(data: bytes) -> str:
    """Best effort: echo the client's command id even when the rest is invalid."""
    if check_command_bytes(data) is not None:
        return ""  # too large or too deep to decode safely
    try:
        body = _loose_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return ""
    if isinstance(body, dict) and isinstance(body.get("command_id"), str):
        return str(body["command_id"])[:200]
    return ""


class CommandIntake:
    """The queue commands wait in for their batch: the bus worker puts what arrives on the
    command subjects, and process managers ``submit`` their own (the ``CommandSink`` port).
    Made before the worker and the managers, so each is built with what it needs. With
    ``routing``, a command of a partition another engine owns goes to that engine."""

    def __init__(self, routing: PartitionRouting | None = None) -> None:
        self.queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self.routing = routing

    def put(self, item: Incoming) -> None:
        """Queue a command here (its partition counted in flight until answered)."""
        if self.routing is not None:
            self.routing.enter(item.partition)
        self.queue.put_nowait(item)

    def answered(self, batch: Sequence[Incoming]) -> None:
        if self.routing is not None:
            self.routing.leave([item.partition for item in batch])

    async def submit(self, command: Command) -> Reply:
        """Run a command from inside the engine (timers) through the same pipeline."""
        routing = self.routing
        partition = routing.partition(command) if routing is not None else None
        if routing is not None and partition is not None and not routing.owns(partition):
            return await routing.submit(command, partition, lambda: self._here(command, partition))
        return await self._here(command, partition)

    async def _here(self, command: Command, partition: int | None) -> Reply:
        done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.put(Incoming(command, None, done, partition=partition))
        return await done


class DeadLetters:
    """Answers what is not a command and copies it to ``chorus.dlq.<reason>`` (the
    ``DeadLetterSink`` port: the worker and the liveness monitor share one)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        #: A flood of bad messages must not flood the log (nor slow the worker down).
        self.errors = RateLimitedLog(log)

    async def reject(self, msg: Msg, rejection: InvalidMessage) -> None:
        """Answer an invalid message (if it asked) and copy it to the dead letters."""
        reply = Reply(
            command_id=_command_id_of(msg.data),
            status="rejected",
            error=ErrorInfo(
                code=rejection.code, message=rejection.message, details=rejection.details
            ),
        )
        try:
            if msg.reply:
                await self.nc.publish(msg.reply, _reply_encoder.encode(reply))
            headers = {
                "Chorus-Reason": rejection.code,
                "Chorus-Error": rejection.message[:1000],
                "Chorus-Subject": msg.subject,
            }
            if len(msg.data) > DEAD_LETTER_BYTES:
                headers["Chorus-Truncated"] = str(len(msg.data))
            await self.nc.publish(
                dlq_subject(rejection.code), msg.data[:DEAD_LETTER_BYTES], headers=headers
            )
        except Exception as error:  # a dead letter must never take the worker down
            self.errors.warning("could not answer an invalid message: %s", error)
        metrics.DEAD_LETTERS.labels(rejection.code).inc()
        if log.isEnabledFor(logging.INFO):  # quiet by default: no second decode then
            log.info(
                "dead letter: %s", rejection.message,
                extra={"reason": rejection.code, "subject": msg.subject,
                       "command_id": _command_id_of(msg.data) or None},
            )  # fmt: skip
        labels = metrics.command_labels(msg.subject, HANDLERS)
        metrics.COMMANDS.labels(*labels, "rejected").inc()


class CommandWorker:
    """One engine worker: subscription, batcher and writer thread."""

    def __init__(
        self,
        nc: NATS,
        processor: Processor,
        *,
        batch_max: int = 256,
        batch_window: float = 0.002,
        subject: str = f"{CMD_PREFIX}.>",
        tracer: Tracer | None = None,
        intake: CommandIntake | None = None,
        dead_letters: DeadLetterSink | None = None,
        heartbeats: HeartbeatSink | None = None,
        listeners: Sequence[CommitListener] = (),
    ) -> None:
        self.nc = nc
        self.tracer = tracer
        self.processor = processor
        self.batch_max = batch_max
        self.batch_window = batch_window
        self.subject = subject
        self.intake = intake or CommandIntake()
        self.queue = self.intake.queue
        # One thread: batches are applied strictly one after another, in arrival order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chorus-writer")
        # Cold aggregates are folded beside it, their commands held meanwhile.
        self.prefetch: Prefetcher[Incoming] = Prefetcher(processor, self.queue.put_nowait)
        self._sub: Subscription | None = None
        self.handled = 0
        self.batches = 0
        #: Told after each commit (the relay, the dispatcher).
        self.listeners = tuple(listeners)
        #: Heartbeats bypass the processor: the liveness monitor takes them (they are
        #: not events). Without one, a heartbeat is an unknown command.
        self.heartbeats = heartbeats
        self.dead_letters = dead_letters or DeadLetters(nc)
        #: A flood of bad messages must not flood the log (nor slow the worker down).
        self.errors = RateLimitedLog(log)
        self.routing = self.intake.routing
        #: The partition subjects it owns (the ownership table's ``PartitionHolder``).
        self.partitions = (
            PartitionSubscriptions(nc, self.routing, self._on_passed_on, self.forget)
            if self.routing is not None
            else None
        )

    async def forget(self, partitions: frozenset[int]) -> None:
        """Evict the cached aggregates of ``partitions``, in the writer thread (after the
        batch in flight, before any command of theirs)."""
        if self.routing is None:
            return
        count = self.routing.count
        await asyncio.get_running_loop().run_in_executor(
            self._writer, self.processor.evict_partitions, partitions, count
        )

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(
            self.subject,
            queue=ENGINE_QUEUE,
            cb=self._on_message,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=1024 * 1024 * 1024,
        )
        # Once start() returns, the server knows the subscription: no "no responders".
        await self.nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(ConnectionClosedError):  # the bus is gone already
                await sub.unsubscribe()

    def close(self) -> None:
        """Wait for a batch in flight to finish its transaction."""
        self.prefetch.close()
        self._writer.shutdown(wait=True)

    async def _signal_commit(self) -> None:
        """Tell a relay in another process that the log has new rows (``COMMITTED``):
        core NATS, no reply; a lost signal costs the relay one poll interval."""
        try:
            await self.nc.publish(COMMITTED, b"")
        except Exception as error:
            raise_if_cancelling()
            self.errors.warning("commit signal lost: %r", error)

    async def _on_message(self, msg: Msg) -> None:
        if is_tool_call(msg.subject):
            return  # the gateways answer tool calls (queue group chorus-tools), never the engine
        if self.heartbeats is not None and msg.subject.endswith(HEARTBEAT_SUFFIX):
            await self._checked(msg, self._heartbeat)
            return
        command = await self._checked(msg, lambda m: parse_message(m.subject, m.data))
        if command is None:
            return
        context = extract(msg.headers) if self.tracer is not None else None
        routing = self.routing
        if routing is None:
            self.queue.put_nowait(Incoming(command, msg.reply or None, trace=context))
            return
        partition = routing.partition(command)
        item = Incoming(command, msg.reply or None, trace=context, partition=partition)
        if partition is None or routing.owns(partition):
            self.intake.put(item)
        else:
            routing.forward(msg, command, partition, lambda: self.intake.put(item))

    async def _on_passed_on(self, msg: Msg) -> None:
        """A command another engine passed on to this partition's owner: checked by that
        engine already (the subject is engine-only), so its actor is trusted here."""
        subject = (msg.headers or {}).get(COMMAND_SUBJECT_HEADER, "")
        command = await self._checked(msg, lambda m: parse_message(subject, m.data, trusted=True))
        if command is None or self.routing is None:
            return
        context = extract(msg.headers) if self.tracer is not None else None
        partition = self.routing.partition(command)
        self.intake.put(Incoming(command, msg.reply or None, trace=context, partition=partition))

    async def _heartbeat(self, msg: Msg) -> None:
        if violation := check_command_bytes(msg.data):
            raise InvalidMessage(violation.code, violation.message, violation.details)
        assert self.heartbeats is not None
        await self.heartbeats.on_heartbeat(msg)

    async def _checked(self, msg: Msg, take: Callable[[Msg], Any]) -> Any:
        """``take(msg)`` (awaited if it is a coroutine), or None once an invalid message was
        answered and dead-lettered; a bug on one message is answered too, and the
        subscription stays alive."""
        try:
            result = take(msg)
            return await result if inspect.isawaitable(result) else result
        except InvalidMessage as rejection:
            await self.reject(msg, rejection)
        except Exception as error:
            self.errors.warning("message on %s failed: %r", msg.subject, error)
            await self.reject(
                msg, InvalidMessage(codes.INTERNAL_ERROR, "the engine failed on this message")
            )
        return None

    async def submit(self, command: Command) -> Reply:
        """Run a command from inside the engine (timers) through the same pipeline."""
        return await self.intake.submit(command)

    async def reject(self, msg: Msg, rejection: InvalidMessage) -> None:
        """Answer an invalid message (if it asked) and copy it to the dead letters."""
        await self.dead_letters.reject(msg, rejection)

    def _decide(
        self, folded: dict[Any, Any], commands: list[Command], traced: TracedBatch | None
    ) -> list[Reply]:
        """In the writer thread: adopt what was folded beside it, the batch's trace
        contexts, then the batch."""
        self.processor.adopt(folded)
        if traced is not None:
            try:
                traced.save_contexts()
            except Exception as error:  # tracing never costs a command
                log.warning("could not store trace contexts: %s", error)
        return self.processor.handle_batch(commands)

    def _fold_when_quiet(self) -> None:
        """Start the folds of cold aggregates once no command waits for the writer (or
        once one has waited ``FOLD_DELAY``): beside a batch, a fold would hold the
        interpreter that batch needs (see chorus.engine.adapters.prefetch)."""
        if self.queue.empty() or self.prefetch.overdue(FOLD_DELAY):
            self.prefetch.start_folds()

    async def run(self) -> None:
        """Take micro-batches until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            self._fold_when_quiet()
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.batch_window
            while len(batch) < self.batch_max:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        batch.append(await self.queue.get())
                except TimeoutError:
                    raise_if_cancelling()  # a cancel racing the timeout (see chorus.aio)
                    break
            batch, folded = self.prefetch.admit(batch)
            if not batch:
                self._fold_when_quiet()
                continue
            commands = [item.command for item in batch]
            started = time.perf_counter()
            traced = None
            if self.tracer is not None:
                traced = TracedBatch(self.tracer, self.processor.recorder, batch)
            try:
                replies = await loop.run_in_executor(
                    self._writer, self._decide, folded, commands, traced
                )
            except Exception as error:
                raise_if_cancelling()
                # e.g. the store could not be read: nothing was recorded, the clients retry.
                log.warning("batch failed before commit: %s", error)
                self.processor.evict(list(self.processor._cache))
                replies = [
                    Reply(
                        command_id=c.command_id,
                        status="rejected",
                        error=ErrorInfo(
                            code=codes.STORE_UNAVAILABLE,
                            message=f"the event store is unavailable: {error}",
                        ),
                    )
                    for c in commands
                ]
            self._fold_when_quiet()
            metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.observe(len(batch))
            self.handled += len(batch)
            self.batches += 1
            for item, reply in zip(batch, replies, strict=True):
                if item.done is not None and not item.done.done():
                    item.done.set_result(reply)
                elif item.reply_to:
                    try:
                        await self.nc.publish(item.reply_to, _reply_encoder.encode(reply))
                    except Exception as error:
                        # NATS away for longer than the reconnect buffer holds: the reply
                        # is lost, not the command (a retry is answered ``duplicate``).
                        raise_if_cancelling()
                        self.errors.warning("reply to %s lost: %r", item.reply_to, error)
                if reply.error is not None:
                    handler = item.command.handler
                    log.info(
                        "command %s.%s rejected: %s", handler.aggregate, handler.command,
                        reply.error.code, extra=_log_fields(item.command),
                    )  # fmt: skip
            if any(reply.status == "accepted" for reply in replies):
                await self._signal_commit()
            metrics.observe_replies(batch, replies)
            self.intake.answered(batch)
            if traced is not None:
                traced.finish(replies)
            for listener in self.listeners:
                listener.wake()
