"""The relay: follows the event store's notification log and publishes to EVENTS.

No dual write: the engine only writes the store; the relay makes the stream catch up.
Its position is the stream itself: the last message carries ``Chorus-Position``. Every
publish also says which stream sequence it expects to follow
(``Nats-Expected-Last-Sequence``), so the stream holds events in position order with no
gap even if a publish fails midway or two relays run at once: a failed or raced publish
makes the relay re-read the stream's tail and resume from there.

No single message can stop it. A message on ``chorus.evt.>`` that the relay did not
publish (a forged ``Chorus-Position`` included) is recognised by comparing it with the
store at the position it claims, and skipped. An event too large for the server's payload
limit is published as a *reference*: the record without its ``data``, marked with the
``Chorus-Data: omitted`` header; readers fetch the whole record from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets

import msgspec
from chorus.aio import in_thread, raise_if_cancelling, wait_event
from chorus.contracts.feed import EventRecord
from chorus.contracts.subjects import EVENTS_STREAM, event_message_id, event_subject
from chorus.engine.adapters import metrics
from chorus.engine.adapters.ratelog import RateLimitedLog
from chorus.engine.adapters.tracing import RelayTracing
from chorus.events.codec import decode_record, is_domain_topic
from eventsourcing.persistence import ApplicationRecorder
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
_probe = msgspec.json.Decoder(dict[str, object])
POSITION_HEADER = "Chorus-Position"
#: Set on a reference message: the record's ``data`` was too large to publish.
DATA_HEADER = "Chorus-Data"
OMITTED = "omitted"
#: Room left in a message for its headers and the protocol line.
_HEADROOM = 4096


class StreamAheadOfStore(RuntimeError):
    """EVENTS holds positions the event store does not have."""


class PublishRejected(RuntimeError):
    """JetStream refused a publish (e.g. another relay moved the stream's tail)."""


class OrderedPublisher:
    """Publishes to JetStream in order and collects every PubAck, errors included.

    nats-py's ``publish_async`` raises an API error inside its reply callback instead of
    failing the future, so a refused publish would leave its future pending forever.
    Here each message's reply resolves its own future, error or not.
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = f"_INBOX.{secrets.token_hex(8)}"
        self._pending: dict[str, asyncio.Future[PubAck]] = {}
        self._sub: Subscription | None = None
        self._next = 0

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str]
    ) -> asyncio.Future[PubAck]:
        if self._sub is None:
            self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)
        self._next += 1
        token = f"{self._prefix}.{self._next}"
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        await self.nc.publish(subject, data, reply=token, headers=headers)
        return future

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject, None)
        if future is None or future.done():
            return
        try:
            body = json.loads(msg.data) if msg.data else {}
        except ValueError:
            body = {}
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(PublishRejected("no stream answered (EVENTS missing?)"))
        elif "error" in body:
            future.set_exception(PublishRejected(str(body["error"].get("description", body))))
        elif "seq" in body:
            future.set_result(PubAck(stream=body.get("stream", ""), seq=body["seq"],
                                     duplicate=body.get("duplicate")))  # fmt: skip
        else:
            future.set_exception(PublishRejected(f"unexpected reply: {msg.data[:200]!r}"))

    def abandon(self) -> None:
        """Forget replies still owed (after a failure, the relay resyncs from the stream)."""
        for future in self._pending.values():
            # Failed, not cancelled: a step awaiting it must resync, not end the relay.
            if not future.done():
                future.set_exception(PublishRejected("abandoned by a resync"))
        self._pending.clear()


class Relay:
    def __init__(
        self,
        recorder: ApplicationRecorder,
        nc: NATS,
        *,
        batch_size: int = 500,
        idle_interval: float = 0.05,
        scan_back: int = 10_000,
        tracer: Tracer | None = None,
        listen: str | None = None,
        read_on_loop: bool = False,
    ) -> None:
        """``listen``: a subject whose messages wake the relay (``COMMITTED``, for a relay
        in a process of its own); else only ``wake`` and the poll every ``idle_interval``.

        ``read_on_loop``: each step reads the log on the event loop instead of in a thread,
        for a relay in a process of its own, whose loop has nothing else to keep waiting
        (its publishes wait for the read anyway). The trip to a thread and back is a fixed
        cost of every step, and the engine's commit signal wakes the relay about 140 times
        a second at 1,000 commands/s. A relay beside the engine's command path reads in a
        thread, so that a slow read never holds up a command."""
        self.recorder = recorder
        self.nc = nc
        #: Publish spans for traced commands' events (see engine.tracing).
        self.tracing = RelayTracing(tracer, recorder) if tracer is not None else None
        self.js = nc.jetstream()
        self.publisher = OrderedPublisher(nc)
        self.scan_back = scan_back
        self.batch_size = batch_size
        self.idle_interval = idle_interval
        self.read_on_loop = read_on_loop
        self.position = 0  # last store position known to be in the stream
        self._stream_seq = 0
        self._skip_dedup_through = 0
        #: The last step read the log to its end (fewer rows than a batch).
        self._caught_up = False
        self._wake = asyncio.Event()
        #: A step and a resync never interleave: a resync called from outside (a restart
        #: in a test, an operator tool) while a step awaits its acks would reset the
        #: position under it, and the step would publish the log again from there.
        self._turn = asyncio.Lock()
        self.listen = listen
        #: Set once the server has the subscription to ``listen``.
        self.listening = asyncio.Event()
        self.published = 0
        self.errors = RateLimitedLog(log)

    def wake(self) -> None:
        """Called after a commit so the relay does not wait for its next poll."""
        self._wake.set()

    async def _on_signal(self, _msg: Msg) -> None:
        self._wake.set()

    async def resync(self) -> None:
        """Read the stream's tail: where to resume and which sequence comes next (between
        steps)."""
        async with self._turn:
            await self._resync()

    async def _resync(self) -> None:
        """Read the stream's tail: where to resume and which sequence comes next.

        The newest message that matches the store at the position it names is ours; any
        other message (no position, a position the store does not have, a different
        event there) is foreign and looked past. If the stream's first message is foreign
        too, the stream was fed from another store: refuse rather than mix histories.
        """
        self.publisher.abandon()
        info = await self.js.stream_info(EVENTS_STREAM)
        self._stream_seq = info.state.last_seq
        self.position = 0
        head = await in_thread(self.recorder.max_notification_id) or 0
        seq = self._stream_seq
        lowest = max(info.state.first_seq, self._stream_seq - self.scan_back)
        foreign_claims: list[int] = []
        while seq >= lowest and seq > 0:
            try:
                message = await self.js.get_msg(EVENTS_STREAM, seq=seq)
            except NotFoundError:
                message = None
            if message is not None and message.headers and POSITION_HEADER in message.headers:
                claimed = _position_of(message.headers)
                if await self._is_ours(claimed, head, message.headers, message.data):
                    self.position = claimed
                    break
                foreign_claims.append(seq)
            seq -= 1
        if self.position == 0 and foreign_claims and foreign_claims[-1] == info.state.first_seq:
            # Every positioned message from the first one on is unknown to this store.
            raise StreamAheadOfStore(
                f"EVENTS holds events (from stream sequence {info.state.first_seq}) that this "
                f"event store (ending at position {head}) does not have: the stream belongs "
                "to another event store; purge EVENTS or restore the store"
            )
        if foreign_claims:
            log.warning(
                "relay: %d message(s) on the event subjects were not published by this "
                "relay (stream sequences %s); ignored",
                len(foreign_claims),
                foreign_claims[:10],
            )

    async def _is_ours(
        self, position: int, head: int, headers: dict[str, str], data: bytes | None
    ) -> bool:
        """Does the store hold, at ``position``, the event this message says it carries?"""
        if not 0 < position <= head:
            return False
        found = await in_thread(self.recorder.select_notifications, position, 1)
        if not found or found[0].id != position or not is_domain_topic(found[0].topic):
            return False
        record = decode_record(found[0])
        if headers.get("Nats-Msg-Id") != event_message_id(record.aggregate_id, record.version):
            return False
        try:
            body = _probe.decode(data or b"")
        except msgspec.DecodeError:
            return False
        return body.get("hash") == record.hash

    async def run(self) -> None:
        if self.listen is not None:
            await self.nc.subscribe(self.listen, cb=self._on_signal)
            await self.nc.flush()
            self.listening.set()
        await self._resync_until_ok()
        while True:
            # Cleared before the step reads the log: a commit signalled while it runs
            # wakes the next wait at once.
            self._wake.clear()
            try:
                moved = await self.step()
            except Exception as error:
                raise_if_cancelling()
                # A failed or raced publish (or NATS away): our view of the tail may be
                # stale, so re-read it and resume from what the stream really holds.
                self.errors.warning("relay publish failed, resyncing: %s", error)
                await self._report_lag(caught_up=False)
                await asyncio.sleep(0.5)
                await self._resync_until_ok()
                continue
            if not moved or self._caught_up:
                # A step that read less than a full batch reached the log's end: wait for
                # the next commit instead of asking the store again at once (at 1,000
                # commands/s that second, empty step was half of the relay's steps).
                await wait_event(self._wake, self.idle_interval)

    async def _resync_until_ok(self) -> None:
        while True:
            try:
                await self.resync()
            except StreamAheadOfStore as error:
                raise_if_cancelling()
                self.errors.warning("relay stopped: %s", error)
                await asyncio.sleep(10)
            except Exception as error:
                raise_if_cancelling()
                self.errors.warning("relay cannot read the stream yet: %s", error)
                await asyncio.sleep(0.5)
            else:
                return

    async def step(self) -> bool:
        """Publish the next batch; True if the log had anything after our position."""
        async with self._turn:
            return await self._step()

    async def _step(self) -> bool:
        read, after = self.recorder.select_notifications, (self.position + 1, self.batch_size)
        notifications = read(*after) if self.read_on_loop else await in_thread(read, *after)
        if not notifications:
            self._caught_up = True
            await self._report_lag(caught_up=True)
            return False
        futures: list[asyncio.Future[PubAck]] = []
        last_domain = self.position
        domain = [(n, decode_record(n)) for n in notifications if is_domain_topic(n.topic)]
        if self.tracing is not None:
            await in_thread(self.tracing.load, [record for _, record in domain])
        for n, record in domain:
            headers = {
                "Nats-Msg-Id": event_message_id(record.aggregate_id, record.version),
                "Nats-Expected-Last-Sequence": str(self._stream_seq + len(futures)),
                POSITION_HEADER: str(n.id),
            }
            if n.id <= self._skip_dedup_through:
                del headers["Nats-Msg-Id"]
            subject = event_subject(record.aggregate, record.aggregate_id, record.type)
            body = _encoder.encode(record)
            if len(body) + _HEADROOM > self.max_payload:
                body = self._reference(record, len(body), headers)
            if self.tracing is not None:
                self.tracing.publishing(record, subject, headers)
            futures.append(await self.publisher.publish(subject, body, headers))
            last_domain = n.id
        if futures:
            async with asyncio.timeout(10):
                results = await asyncio.gather(*futures, return_exceptions=True)
            if self.tracing is not None:
                self.tracing.published()
            # What went wrong first decides: later failures follow from it (a duplicate
            # is not stored, so every later expected sequence is off by one).
            first = next((r for r in results if isinstance(r, BaseException) or r.duplicate), None)
            if isinstance(first, BaseException):
                raise first
            if first is not None:
                # Someone stored it before us: our view of the tail is stale.
                before = self.position
                await self._resync()
                if self.position <= before:
                    # No relay moved the tail: the message id is held by a message we did
                    # not publish, or by one purged within the duplicate window. Publish
                    # these without it; the expected sequence alone keeps the order.
                    log.warning("relay: message ids up to position %d are taken; "
                                "publishing without them", notifications[-1].id)  # fmt: skip
                    self._skip_dedup_through = notifications[-1].id
                self._caught_up = False  # step again at once, from the resynced position
                return True
            acks = [r for r in results if isinstance(r, PubAck)]
            self._stream_seq = acks[-1].seq
            self.published += len(futures)
            metrics.RELAY_PUBLISHED.inc(len(futures))
        # Bookkeeping notifications after the last domain event are skipped, not lost:
        # the tail message still names the last domain position, and they carry no event.
        self.position = max(last_domain, notifications[-1].id)
        self._caught_up = len(notifications) < self.batch_size
        await self._report_lag(caught_up=self._caught_up)
        return True

    @property
    def max_payload(self) -> int:
        """The server's payload limit (1 MiB by default), as it told this connection."""
        return int(self.nc.max_payload or 1024 * 1024)

    def _reference(self, record: EventRecord, size: int, headers: dict[str, str]) -> bytes:
        """The record without its data: what a reader needs to fetch it from the store."""
        log.warning(
            "relay: event %s:%d at position %d is %d bytes, over the payload limit (%d): "
            "published as a reference",
            record.aggregate_id, record.version, record.position, size, self.max_payload,
        )  # fmt: skip
        headers[DATA_HEADER] = OMITTED
        headers["Chorus-Data-Bytes"] = str(size)
        return _encoder.encode(msgspec.structs.replace(record, data={}))

    async def _report_lag(self, *, caught_up: bool) -> None:
        """Position and lag gauges; the head is read only when the relay is behind it."""
        metrics.RELAY_POSITION.set(self.position)
        head = self.position
        if not caught_up:
            with contextlib.suppress(Exception):  # metrics never break the relay
                head = await in_thread(lambda: self.recorder.max_notification_id() or 0)
        metrics.RELAY_LAG.set(max(0, head - self.position))


def _position_of(headers: dict[str, str]) -> int:
    try:
        return int(headers.get(POSITION_HEADER, "0"))
    except ValueError:
        return 0
