"""JetStream streams Chorus needs, created idempotently at start-up."""

from __future__ import annotations

from chorus.contracts.subjects import DLQ_PREFIX, DLQ_STREAM, EVENTS_STREAM, EVT_PREFIX
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

DAY = 24 * 3600.0
#: Dead letters are for inspection, not storage: a flood of bad messages evicts the oldest.
DLQ_MAX_BYTES = 64 * 1024 * 1024
#: A dead letter keeps 64 KiB of its message (engine.worker.DEAD_LETTER_BYTES) plus headers.
DLQ_MAX_MESSAGE_BYTES = 128 * 1024


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
