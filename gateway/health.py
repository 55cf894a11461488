"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, get

from gateway.state import ServicesDep
from projections import sessions as read_model


@get("/health", exclude_from_auth=True, tags=["health"], summary="The gateway process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", exclude_from_auth=True, tags=["health"],
     summary="NATS connected, store reachable, projection lag")  # fmt: skip
async def ready(services: ServicesDep) -> Response[dict[str, Any]]:
    checks: dict[str, Any] = {"nats": services.nc.is_connected}
    try:
        head = await asyncio.to_thread(services.history.head)
        checks["event_store"] = True
    except Exception as error:
        head = None
        checks["event_store"] = False
        checks["event_store_error"] = str(error)
    position = services.reads.position(read_model.NAME)
    checks["projections"] = {
        read_model.NAME: {
            "position": position,
            "lag": (head - position) if head is not None else None,
        }
    }
    ok = bool(checks["nats"] and checks["event_store"])
    return Response(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )
