"""Spans of the engine: each traced command, the batch that recorded it, the relay publish.

Only commands that arrive with a W3C ``traceparent`` header are traced, and only when the
engine was given a tracer provider (``EngineConfig.tracer_provider``). A command's span
runs from its arrival to its reply; its child ``chorus.engine.batch`` spans the batch's
transaction (with the batch size), so each trace shows the batch it rode in. Before the
batch commits, each command span's context is stored next to the events
(``chorus.store.tracecontext``) so the relay and the projector continue the same trace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from chorus.contracts.envelope import Reply
from chorus.contracts.feed import EventRecord
from chorus.contracts.tracing import context_of, inject, traceparent
from chorus.store import tracecontext
from eventsourcing.persistence import ApplicationRecorder
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer


class TracedBatch:
    """The spans of one batch's traced commands (an empty batch traces nothing)."""

    def __init__(self, tracer: Tracer, recorder: ApplicationRecorder, items: Sequence[Any]) -> None:
        self.tracer = tracer
        self.recorder = recorder
        self.spans: dict[int, Span] = {}
        for index, item in enumerate(items):
            if item.trace is None:
                continue
            handler = item.command.handler
            self.spans[index] = tracer.start_span(
                f"chorus.command {handler.aggregate}.{handler.command}",
                context=item.trace, kind=SpanKind.SERVER, start_time=item.received_ns,
                attributes={
                    "messaging.system": "nats", "chorus.actor": item.command.actor,
                    "chorus.command_id": item.command.command_id,
                    "chorus.correlation_id": item.command.envelope.correlation_id or "",
                },
            )  # fmt: skip
        self.items = items
        self.started = 0

    def save_contexts(self) -> None:
        """In the writer thread, right before the batch's transaction."""
        self.started = time.time_ns()
        tracecontext.save(
            self.recorder,
            (
                (self.items[i].command.actor, self.items[i].command.command_id, value)
                for i, span in self.spans.items()
                if (value := traceparent(span)) is not None
            ),
        )

    def finish(self, replies: Sequence[Reply]) -> None:
        ended = time.time_ns()
        for index, span in self.spans.items():
            batch = self.tracer.start_span(
                "chorus.engine.batch", context=trace.set_span_in_context(span),
                start_time=self.started or ended, attributes={"chorus.batch_size": len(self.items)},
            )  # fmt: skip
            batch.end(end_time=ended)
            reply = replies[index]
            span.set_attribute("chorus.status", reply.status)
            if reply.error is not None:
                span.set_status(StatusCode.ERROR, reply.error.code)
            span.end()


class RelayTracing:
    """Publish spans for the events of traced commands, and their context in the headers."""

    def __init__(self, tracer: Tracer, recorder: ApplicationRecorder) -> None:
        self.tracer = tracer
        self.recorder = recorder
        self.contexts: dict[tuple[str, str], Context] = {}
        self.spans: list[Span] = []
        tracecontext.ensure_table(recorder)

    def load(self, records: Sequence[EventRecord]) -> None:
        """Blocking: the stored contexts of these records' commands."""
        found = tracecontext.load(self.recorder, {(r.actor, r.command_id) for r in records})
        self.contexts = {key: context_of(value) for key, value in found.items()}

    def publishing(self, record: EventRecord, subject: str, headers: dict[str, str]) -> None:
        context = self.contexts.get((record.actor, record.command_id))
        if context is None:
            return
        span = self.tracer.start_span(
            "chorus.relay publish", context=context, kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.destination.name": subject,
                        "chorus.position": record.position},
        )  # fmt: skip
        inject(headers, span)  # feeds can continue the trace from the EVENTS message
        self.spans.append(span)

    def published(self) -> None:
        for span in self.spans:
            span.end()
        self.spans = []
