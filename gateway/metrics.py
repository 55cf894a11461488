"""``GET /metrics`` (Prometheus text format) and ``GET /api/v1/metrics`` (JSON overview).

One scrape shows every process. In ``chorus up`` the engine, projector and gateway are
separate processes; they all write their metrics to ``PROMETHEUS_MULTIPROC_DIR`` (set by
the supervisor) and this endpoint reads them with prometheus-client's multiprocess
collector. That mode was chosen over per-process endpoints aggregated by the gateway
because it needs no extra ports, no fan-out on each scrape, and keeps counters of a child
that was restarted. Without that variable (tests, one process) the default registry is
served, and the split processes can expose their own with ``CHORUS_METRICS_PORT``.

The fleet's state (read-model lag, sessions, workflows and agents by status) is computed
here at scrape time from the event store's head and the read models, so a stalled
projector shows as growing lag rather than as a frozen gauge.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from chorus.gateway.auth import can_read
from chorus.gateway.health import PROJECTION_NAMES
from chorus.gateway.state import Services, ServicesDep
from chorus.projections.overview import seal_status, status_counts
from litestar import Response, get
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.plugins.prometheus import PrometheusConfig
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

FEED_SUBSCRIBERS = Gauge(
    "chorus_feed_subscribers",
    "Open WebSocket feed connections, by feed route",
    ["feed"],
    multiprocess_mode="livesum",
)

#: HTTP requests by method, route template and status, with latency:
#: ``chorus_http_requests_total``, ``chorus_http_request_duration_seconds``,
#: ``chorus_http_requests_in_progress``, ``chorus_http_requests_error_total``.
HTTP_METRICS = PrometheusConfig(
    app_name="chorus",
    prefix="chorus_http",
    group_path=True,  # the route template, not the raw path: bounded label values
    scopes={ScopeType.HTTP},
    exclude=["^/metrics$"],
)


class FeedSubscribersMiddleware(ASGIMiddleware):
    """Counts open WebSocket connections per route while they last."""

    scopes = (ScopeType.WEBSOCKET,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        gauge = FEED_SUBSCRIBERS.labels(scope.get("path_template", "unknown"))
        gauge.inc()
        try:
            await next_app(scope, receive, send)
        finally:
            gauge.dec()


def process_registry() -> CollectorRegistry:
    """Every process's metrics (multiprocess mode), else this process's own."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def fleet_snapshot(services: Services) -> dict[str, Any]:
    """Head, read-model positions and lag, and counts by status (blocking reads)."""
    head = services.history.head()
    projections = {}
    for name in PROJECTION_NAMES:
        position = services.reads.position(name)
        projections[name] = {"position": position, "lag": max(0, head - position)}
    return {
        "event_store_head": head,
        "seal": seal_status(services.history.recorder, head),
        "projections": projections,
        **status_counts(services.reads.connection()),
    }


class _Snapshot(Collector):
    """Families computed once per scrape from a ``fleet_snapshot``."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self.snapshot
        yield GaugeMetricFamily(
            "chorus_event_store_head_position", "Newest position in the event store's log",
            value=s["event_store_head"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "chorus_unsealed_events", "Rows after the seal ledger's last seal",
            value=s["seal"]["unsealed"],
        )  # fmt: skip
        lag = GaugeMetricFamily(
            "chorus_projection_lag_events",
            "Log notifications a read model has not applied yet", labels=["projection"],
        )  # fmt: skip
        for name, p in s["projections"].items():
            lag.add_metric([name], p["lag"])
        yield lag
        for model in ("sessions", "workflows", "agents"):
            family = GaugeMetricFamily(
                f"chorus_{model}", f"{model.capitalize()} in the read model, by status",
                labels=["status"],
            )  # fmt: skip
            for status, count in sorted(s[model].items()):
                family.add_metric([status], count)
            yield family
        queued = GaugeMetricFamily(
            "chorus_workflows_queued", "Workflows waiting to be dispatched, by priority",
            labels=["priority"],
        )  # fmt: skip
        for priority in ("low", "normal", "high", "critical"):
            queued.add_metric([priority], s["queued"].get(priority, 0))
        yield queued


@get("/metrics", exclude_from_auth=True, tags=["health"], include_in_schema=True,
     summary="Prometheus metrics of every process (text format)")  # fmt: skip
async def prometheus_metrics(services: ServicesDep) -> Response[bytes]:
    snapshot = await asyncio.to_thread(fleet_snapshot, services)
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(_Snapshot(snapshot))
    body = generate_latest(process_registry()) + generate_latest(fleet)
    # Litestar appends the charset to a text/ media type itself; named twice, scrapers that
    # parse the header strictly would refuse it.
    return Response(body, media_type=CONTENT_TYPE_LATEST.split("; charset")[0])


@get("/api/v1/metrics", guards=[can_read], tags=["health"],
     summary="Fleet overview: counts by status, read-model lag, the log's head")  # fmt: skip
async def metrics_overview(services: ServicesDep) -> dict[str, Any]:
    return await asyncio.to_thread(fleet_snapshot, services)
