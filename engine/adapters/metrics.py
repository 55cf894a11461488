"""The engine's Prometheus metrics: commands, batches, replies, dead letters, the relay.

Module-level collectors, as prometheus-client intends: they live in the process's default
registry, or, when ``PROMETHEUS_MULTIPROC_DIR`` is set (``chorus up``), in files that the
gateway's ``/metrics`` reads, so one scrape shows every process. Gauges say how they add up
across processes (``multiprocess_mode``). Names follow Prometheus conventions: a ``chorus_``
prefix, base units (seconds), ``_total`` on counters.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Container, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

#: Commands per batch: 1 up to the default ``CHORUS_BATCH_MAX`` and beyond.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Sub-millisecond SQLite commits up to multi-second stalls.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

COMMANDS = Counter(
    "chorus_commands_total",
    "Commands answered by the engine, by aggregate, command and reply status",
    ["aggregate", "command", "status"],
)
BATCH_SIZE = Histogram(
    "chorus_engine_batch_size", "Commands per engine micro-batch", buckets=_BATCH_BUCKETS
)
COMMIT_SECONDS = Histogram(
    "chorus_engine_commit_seconds",
    "Time to decide and record one micro-batch (one store transaction)",
    buckets=_LATENCY_BUCKETS,
)
REPLY_SECONDS = Histogram(
    "chorus_command_reply_seconds",
    "From a command's arrival at the engine to its reply (batching, commit, answer)",
    buckets=_LATENCY_BUCKETS,
)
VERSION_CONFLICTS = Counter(
    "chorus_engine_version_conflicts_total",
    "Batches whose commit failed on a version check (another writer got there first); "
    "each is retried command by command, so none is lost, but each costs a refold",
)
FORWARDED = Counter(
    "chorus_engine_forwarded_total",
    "Commands this engine took from the queue group (or its process managers issued) and "
    "passed on to the owner of their partition",
)
PARTITIONS_OWNED = Gauge(
    "chorus_engine_partitions_owned",
    "Command partitions this engine takes now",
    multiprocess_mode="livesum",
)
DEAD_LETTERS = Counter(
    "chorus_dead_letters_total", "Messages copied to chorus.dlq.<reason>", ["reason"]
)
WAL_FRAMES = Gauge(
    "chorus_event_store_wal_frames",
    "Frames in the SQLite event store's WAL at its last checkpoint, and those not yet copied "
    "back into the database file (a reader holding an old snapshot keeps them)",
    ["state"],
    multiprocess_mode="livemax",
)
RELAY_PUBLISHED = Counter(
    "chorus_relay_published_total", "Events the relay published to the EVENTS stream"
)
RELAY_POSITION = Gauge(
    "chorus_relay_position",
    "Last log position the relay knows to be in the EVENTS stream",
    multiprocess_mode="livemostrecent",
)
RELAY_LAG = Gauge(
    "chorus_relay_lag_events",
    "Notifications in the event store the relay has not yet published",
    multiprocess_mode="livemostrecent",
)


def command_labels(subject: str, known: Container[tuple[str, str]]) -> tuple[str, str]:
    """Aggregate and command of a subject, as labels; anything not in the handler table is
    ``unknown``, so a hostile client cannot grow the label set."""
    parts = subject.split(".")
    key = (parts[3], parts[4]) if len(parts) == 5 else ("", "")
    return key if key in known else ("unknown", "unknown")


def observe_replies(batch: Sequence[Any], replies: Sequence[Any]) -> None:
    """Count a batch's replies by command and status (one increment per kind, not per
    command: this runs on the hot path) and observe each command's time to its reply."""
    tally = Tally(
        (item.command.handler.aggregate, item.command.handler.command, reply.status)
        for item, reply in zip(batch, replies, strict=True)
    )
    for labels, count in tally.items():
        COMMANDS.labels(*labels).inc(count)
    now = time.monotonic()
    for item in batch:
        REPLY_SECONDS.observe(now - item.arrived)
