"""The relay: follows the event store's notification log and publishes to EVENTS.

No dual write: the engine only writes the store; the relay makes the stream catch up.
Its position is the stream itself: the last message carries ``Chorus-Position``. Every
publish also says which stream sequence it expects to follow
(``Nats-Expected-Last-Sequence``), so the stream holds events in position order with no
gap even if a publish fails midway or two relays run at once: a failed or raced publish
makes the relay re-read the stream's tail and resume from there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

import msgspec
from eventsourcing.persistence import ApplicationRecorder
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from contracts.aio import raise_if_cancelling, wait_event
from contracts.subjects import EVENTS_STREAM, event_message_id, event_subject
from events.codec import decode_record, is_domain_topic

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
POSITION_HEADER = "Chorus-Position"


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
            future.cancel()
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
    ) -> None:
        self.recorder = recorder
        self.js = nc.jetstream()
        self.publisher = OrderedPublisher(nc)
        self.scan_back = scan_back
        self.batch_size = batch_size
        self.idle_interval = idle_interval
        self.position = 0  # last store position known to be in the stream
        self._stream_seq = 0
        self._wake = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        """Called after a commit so the relay does not wait for its next poll."""
        self._wake.set()

    async def resync(self) -> None:
        """Read the stream's tail: where to resume and which sequence comes next."""
        self.publisher.abandon()
        info = await self.js.stream_info(EVENTS_STREAM)
        self._stream_seq = info.state.last_seq
        self.position = 0
        # The newest message we published; skip anything foreign someone else put there.
        seq = self._stream_seq
        lowest = max(info.state.first_seq, self._stream_seq - self.scan_back)
        while seq >= lowest and seq > 0:
            try:
                message = await self.js.get_msg(EVENTS_STREAM, seq=seq)
            except NotFoundError:
                message = None
            if message is not None and message.headers and POSITION_HEADER in message.headers:
                self.position = int(message.headers[POSITION_HEADER])
                break
            seq -= 1
        head = await asyncio.to_thread(self.recorder.max_notification_id) or 0
        if self.position > head:
            # The stream was fed from another store (e.g. the store was replaced but NATS
            # kept its data). Publishing would interleave two histories: refuse loudly.
            raise StreamAheadOfStore(
                f"EVENTS ends at position {self.position} but the event store ends at {head}: "
                "the stream belongs to another event store; purge EVENTS or restore the store"
            )

    async def run(self) -> None:
        await self._resync_until_ok()
        while True:
            try:
                moved = await self.step()
            except Exception as error:
                raise_if_cancelling()
                # A failed or raced publish (or NATS away): our view of the tail may be
                # stale, so re-read it and resume from what the stream really holds.
                log.warning("relay publish failed, resyncing: %s", error)
                await asyncio.sleep(0.5)
                await self._resync_until_ok()
                continue
            if not moved:
                self._wake.clear()
                await wait_event(self._wake, self.idle_interval)

    async def _resync_until_ok(self) -> None:
        while True:
            try:
                await self.resync()
            except StreamAheadOfStore as error:
                raise_if_cancelling()
                log.error("relay stopped: %s", error)
                await asyncio.sleep(10)
            except Exception as error:
                raise_if_cancelling()
                log.warning("relay cannot read the stream yet: %s", error)
                await asyncio.sleep(0.5)
            else:
                return

    async def step(self) -> bool:
        """Publish the next batch; True if the log had anything after our position."""
        notifications = await asyncio.to_thread(
            self.recorder.select_notifications, self.position + 1, self.batch_size
        )
        if not notifications:
            return False
        futures: list[asyncio.Future[PubAck]] = []
        last_domain = self.position
        for n in notifications:
            if not is_domain_topic(n.topic):
                continue
            record = decode_record(n)
            headers = {
                "Nats-Msg-Id": event_message_id(record.aggregate_id, record.version),
                "Nats-Expected-Last-Sequence": str(self._stream_seq + len(futures)),
                POSITION_HEADER: str(n.id),
            }
            subject = event_subject(record.aggregate, record.aggregate_id, record.type)
            futures.append(await self.publisher.publish(subject, _encoder.encode(record), headers))
            last_domain = n.id
        if futures:
            async with asyncio.timeout(10):
                acks = await asyncio.gather(*futures)
            for ack in acks:
                if ack.duplicate:
                    # Someone stored it before us: our view of the tail is stale.
                    await self.resync()
                    return True
            self._stream_seq = acks[-1].seq
            self.published += len(futures)
        # Bookkeeping notifications after the last domain event are skipped, not lost:
        # the tail message still names the last domain position, and they carry no event.
        self.position = max(last_domain, notifications[-1].id)
        return True
