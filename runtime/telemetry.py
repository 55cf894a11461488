"""Process-level observability wiring: the shared metrics directory of ``chorus up``, the
per-process metrics port of the split processes, and OpenTelemetry tracing.

Tracing is off unless an OTLP endpoint is configured with the standard variables
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; protocol from
``OTEL_EXPORTER_OTLP_PROTOCOL``, ``http/protobuf`` unless ``grpc``). It needs the ``otel``
extra: the official ``opentelemetry-sdk``, ``opentelemetry-exporter-otlp`` and, for the
gateway's server spans through Litestar's built-in support, ``opentelemetry-instrumentation-asgi``.
"""

from __future__ import annotations

import atexit
import os
import shutil
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def fresh_metrics_dir(data_dir: Path) -> Path:
    """An empty ``<data>/metrics`` for this run's processes to write their metrics into.

    Emptied at each start, as prometheus-client asks: files of an earlier run would add
    its counts to this one's.
    """
    path = data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def process_died(metrics_dir: Path, pid: int) -> None:
    """Drop a dead child's live gauges (its counters keep counting in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]


def serve_metrics(port: int | None, host: str) -> None:
    """A split engine or projector answers Prometheus on its own port when asked to."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host)


def tracing_endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def setup_tracing(service: str) -> Any:
    """A tracer provider exporting to the configured OTLP endpoint, or None (tracing off)."""
    if not tracing_endpoint():
        return None
    try:
        import opentelemetry.instrumentation.asgi  # noqa: F401  (the gateway's server spans)
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
    except ImportError as error:
        raise SystemExit(
            f"chorus: an OTLP endpoint is set but tracing is not installed ({error}); "
            "pip install 'chorus[otel]'"
        ) from None
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    atexit.register(provider.shutdown)  # flush what is buffered on the way out
    return provider
