"""W3C trace context on the bus: how a trace crosses NATS, the event store and processes.

A traced command carries ``traceparent`` (and ``tracestate``) in its NATS message headers,
as the W3C Trace Context spec spells them; the relay's EVENTS messages carry the context of
the command that recorded them. Only the OpenTelemetry API is used here; a process traces
only when its composition root hands it a tracer provider (``chorus.telemetry``).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

W3C = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"


def tracer_of(provider: TracerProvider | None, name: str) -> Tracer | None:
    """A tracer, or None where tracing is off (callers skip all tracing work then)."""
    return provider.get_tracer(name) if provider is not None else None


def inject(headers: dict[str, str], span: Span | None = None) -> dict[str, str]:
    """Write the context of ``span`` (default: the current one) into ``headers``."""
    context = trace.set_span_in_context(span) if span is not None else None
    W3C.inject(headers, context=context)
    return headers


def extract(headers: dict[str, str] | None) -> Context | None:
    """The context a message carries, or None if it carries none."""
    if not headers or TRACEPARENT not in headers:
        return None
    return W3C.extract(headers)


def traceparent(span: Span) -> str | None:
    """``span``'s context as one ``traceparent`` value (to store it next to the events)."""
    return inject({}, span).get(TRACEPARENT)


def context_of(value: str) -> Context:
    return W3C.extract({TRACEPARENT: value})
