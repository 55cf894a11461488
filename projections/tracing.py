"""Spans of the projector: a read-model write, in the trace of each command it applied.

The projector reads the log, not the bus, so it finds a command's trace context where the
engine stored it next to the events (``chorus.store.tracecontext``). One span per traced command
per batch, timed as the batch's read-store transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from chorus.contracts.feed import EventRecord
from chorus.contracts.tracing import context_of
from chorus.store import tracecontext
from eventsourcing.persistence import ApplicationRecorder
from opentelemetry.trace import SpanKind, Tracer


def record_write_spans(
    tracer: Tracer, recorder: ApplicationRecorder, projection: str,
    records: Sequence[EventRecord], started_ns: int, ended_ns: int,
) -> None:  # fmt: skip
    found = tracecontext.load(recorder, {(r.actor, r.command_id) for r in records})
    for (actor, command_id), value in found.items():
        events = [r for r in records if (r.actor, r.command_id) == (actor, command_id)]
        span = tracer.start_span(
            f"chorus.projection {projection} write", context=context_of(value),
            kind=SpanKind.CONSUMER, start_time=started_ns,
            attributes={"chorus.projection": projection, "chorus.command_id": command_id,
                        "chorus.events": len(events), "chorus.position": events[-1].position},
        )  # fmt: skip
        span.end(end_time=ended_ns)
