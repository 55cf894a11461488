"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, get

from gateway.state import ServicesDep
from projections import agents, sessions, workflows

PROJECTION_NAMES = (sessions.NAME, workflows.NAME, agents.NAME)


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
    checks["projections"] = {}
    for name in PROJECTION_NAMES:
        position = services.reads.position(name)
        checks["projections"][name] = {
            "position": position,
            "lag": (head - position) if head is not None else None,
        }
    ok = bool(checks["nats"] and checks["event_store"])
    return Response(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )
