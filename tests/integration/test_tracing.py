"""One trace per command, across processes' worth of components: the HTTP request, the
NATS command (W3C trace context in its headers), the engine's batch, the relay's publish
and the projection's write, all in one trace (real NATS, gateway, engine, projector; an
in-memory exporter)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from chorus.bootstrap import EngineService
from chorus.projections.projector import run_together
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import ProjectionRunner
from chorus.projections.sessions import SessionsProjection
from chorus.store.recorder import open_recorder
from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import Gateway
from tests.integration.test_bus import send
from tests.integration.test_gateway_support import open_body

CORRELATION = "corr-trace-1"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def engine_options(provider: TracerProvider) -> dict[str, Any]:
    return {"tracer_provider": provider}


@pytest.fixture
def gateway_options(provider: TracerProvider) -> dict[str, Any]:
    return {"tracer_provider": provider}


@pytest.fixture
async def traced_projector(
    database_url: str, read_store_url: str, provider: TracerProvider
) -> AsyncIterator[ProjectionRunner]:
    runner = ProjectionRunner(
        open_recorder(database_url), ReadStore(read_store_url), SessionsProjection(),
        idle_interval=0.005, tracer=provider.get_tracer("chorus.projections"),
    )  # fmt: skip
    task = asyncio.create_task(run_together([runner]))
    yield runner
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def named(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def test_one_trace_from_the_http_request_to_the_projection_write(
    engine: EngineService, traced_projector: ProjectionRunner, gateway: Gateway,
    exporter: InMemorySpanExporter, nc: NATS,
) -> None:  # fmt: skip
    headers = {**gateway.key("ops-1", "operator"), "X-Correlation-Id": CORRELATION}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        response = await http.post(
            "/api/v1/sessions", json=open_body(["agent-1", "agent-2"]), headers=headers
        )
    assert response.status_code == 201, response.text
    session_id = response.json()["session_id"]

    def is_server(span: ReadableSpan) -> bool:
        return span.kind == SpanKind.SERVER and span.name.startswith("POST")

    async def all_spans() -> list[ReadableSpan]:
        # The relay and the projector follow the log on their own, and the gateway ends
        # its server span after the response went out: any of them may finish last.
        for _ in range(500):
            spans = list(exporter.get_finished_spans())
            if (named(spans, "chorus.relay publish") and named(spans, "chorus.projection")
                    and any(is_server(s) for s in spans)):  # fmt: skip
                return spans
            await asyncio.sleep(0.02)
        raise AssertionError(f"missing spans: {[s.name for s in exporter.get_finished_spans()]}")

    spans = await all_spans()
    [server] = [s for s in spans if is_server(s)]
    [send] = named(spans, "chorus.command send")
    [command] = named(spans, "chorus.command session.open")
    [batch] = named(spans, "chorus.engine.batch")
    [publish] = named(spans, "chorus.relay publish")
    [write] = named(spans, "chorus.projection sessions write")
    trace_id = server.context.trace_id
    for span in (send, command, batch, publish, write):
        assert span.context.trace_id == trace_id, span.name

    def parent(span: ReadableSpan) -> int | None:
        return span.parent.span_id if span.parent else None

    assert parent(send) == server.context.span_id
    assert parent(command) == send.context.span_id  # the context crossed NATS in headers
    assert parent(batch) == command.context.span_id
    assert parent(publish) == command.context.span_id
    assert parent(write) == command.context.span_id  # ... and the event store
    assert server.attributes["chorus.correlation_id"] == CORRELATION
    assert send.attributes["chorus.correlation_id"] == CORRELATION
    assert command.attributes["chorus.correlation_id"] == CORRELATION
    assert command.attributes["chorus.status"] == "accepted"
    assert batch.attributes["chorus.batch_size"] >= 1
    assert publish.attributes["messaging.destination.name"].startswith(
        f"chorus.evt.session.{session_id}."
    )

    # The EVENTS message carries the trace on to whoever reads the stream.
    js = nc.jetstream()
    info = await js.stream_info("EVENTS")
    message = await js.get_msg("EVENTS", seq=info.state.last_seq)
    assert f"{trace_id:032x}" in (message.headers or {}).get("traceparent", "")


async def test_untraced_commands_record_no_spans(
    engine: EngineService, exporter: InMemorySpanExporter, nc: NATS
) -> None:
    payload = {"session_id": str(uuid.uuid4()), **open_body(["agent-1"])}
    assert (await send(nc, "ops-1", "open", payload))["status"] == "accepted"
    assert exporter.get_finished_spans() == ()
