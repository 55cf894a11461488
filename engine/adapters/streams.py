"""JetStream streams Chorus needs, created idempotently at start-up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from chorus.aio import raise_if_cancelling
from chorus.contracts.subjects import DLQ_PREFIX, DLQ_STREAM, EVENTS_STREAM, EVT_PREFIX
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

log = logging.getLogger(__name__)
T = TypeVar("T")

DAY = 24 * 3600.0
#: Dead letters are for inspection, not storage: a flood of bad messages evicts the oldest.
DLQ_MAX_BYTES = 64 * 1024 * 1024
#: A dead letter keeps 64 KiB of its message (engine.worker.DEAD_LETTER_BYTES) plus headers.
DLQ_MAX_MESSAGE_BYTES = 128 * 1024
#: How long a process starting up waits for JetStream to answer before it gives up.
JETSTREAM_START_WAIT = 120.0
#: JetStream error codes of a cluster still forming, which answers 400 all the same:
#: 10005 "no suitable peers for placement" while the routes to the other nodes come up.
FORMING_CLUSTER_CODES = frozenset({10005})


def stream_configs(replicas: int = 1) -> list[StreamConfig]:
    """EVENTS keeps every event (the store is the source of truth, the stream its live
    mirror); duplicates from a relay restart are absorbed by the message id within the
    duplicate window. Command subjects are deliberately captured by no stream."""
    return [
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[f"{EVT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=600.0,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=DLQ_STREAM,
            subjects=[f"{DLQ_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=7 * DAY,
            max_msgs=1_000_000,
            max_bytes=DLQ_MAX_BYTES,
            max_msg_size=DLQ_MAX_MESSAGE_BYTES,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
        ),
    ]


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create or update the streams; safe to call from every process at every start."""
    for config in stream_configs(replicas):
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)


async def until_jetstream_answers(
    call: Callable[[], Awaitable[T]], what: str, timeout: float = JETSTREAM_START_WAIT
) -> T:
    """``call()`` again while JetStream does not answer, for up to ``timeout`` seconds.

    In a cluster, a JetStream request is lost when the node it went through dies, and
    none is answered while the cluster elects a leader or lacks a quorum. A process
    starting at that moment waits for the cluster rather than exiting (and being restarted
    into the same moment). A replicated stream asked for before the other nodes have
    joined is refused with a 400 that only names peers offline: that is waited out too.
    Any other request the server refuses as bad (a stream it will not create) is not
    retried."""
    deadline = time.monotonic() + timeout
    delay = 0.25
    while True:
        try:
            return await call()
        except (nats.errors.Error, TimeoutError) as error:
            if isinstance(error, BadRequestError) and error.err_code not in FORMING_CLUSTER_CODES:
                raise
            raise_if_cancelling()
            if time.monotonic() + delay > deadline:
                raise
            log.warning("JetStream did not answer (%s): %r; trying again", what, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
