"""The projector's Prometheus metrics (see ``chorus.engine.adapters.metrics`` for how processes share them).

The lag per read model is computed by the gateway at scrape time from the store's head
and the positions in the read store, so a stalled or dead projector shows as growing lag.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

APPLIED = Counter(
    "chorus_projection_notifications_total",
    "Log notifications a projection consumed",
    ["projection"],
)
POSITION = Gauge(
    "chorus_projection_position",
    "Last log position a projection has written",
    ["projection"],
    multiprocess_mode="livemostrecent",
)
BATCH_SECONDS = Histogram(
    "chorus_projection_batch_seconds",
    "Time to apply one batch and write its position in one read-store transaction",
    ["projection"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
