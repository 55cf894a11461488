"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chorus.contracts.subjects import EVENTS_STREAM
from chorus.gateway.feeds import POSITION_HEADER
from chorus.gateway.state import Services, ServicesDep
from chorus.projections import agents, mcp, sessions, workflows
from litestar import Response, get
from nats.js.errors import NotFoundError

PROJECTION_NAMES = (sessions.NAME, workflows.NAME, agents.NAME, mcp.NAME)


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
    if checks["event_store"] and (problem := await asyncio.to_thread(disk_problem, services)):
        checks["event_store"] = False
        checks["event_store_error"] = problem
    checks["projections"] = {}
    for name in PROJECTION_NAMES:
        position = services.reads.position(name)
        checks["projections"][name] = {
            "position": position,
            "lag": (head - position) if head is not None else None,
        }
    checks["relay"] = await relay_check(services, head) if head is not None else None
    relay_ok = checks["relay"] is None or not checks["relay"]["stalled"]
    ok = bool(checks["nats"] and checks["event_store"] and relay_ok)
    return Response(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )


async def stream_tail_position(services: Services, head: int, scan: int = 100) -> int:
    """The position of the newest message on EVENTS that the store can have published
    (a message claiming a position beyond the store's head is foreign: looked past)."""
    js = services.nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    seq = info.state.last_seq
    lowest = max(info.state.first_seq, seq - scan)
    while seq >= lowest and seq > 0:
        try:
            msg = await js.get_msg(EVENTS_STREAM, seq=seq)
        except NotFoundError:
            msg = None
        try:
            position = int(((msg.headers if msg else None) or {}).get(POSITION_HEADER, "0"))
        except ValueError:
            position = 0
        if 0 < position <= head:
            return position
        seq -= 1
    return 0


async def relay_check(services: Services, head: int) -> dict[str, Any]:
    """Is the relay keeping EVENTS up with the store? Stalled when the oldest event not
    yet on the stream was recorded more than ``relay_stall_seconds`` ago."""
    try:
        async with asyncio.timeout(2):
            tail = await stream_tail_position(services, head)
    except Exception as error:
        return {"stalled": True, "error": f"cannot read the EVENTS stream: {error!r}"}
    pending = await asyncio.to_thread(services.history.first_event_after, tail)
    waited = 0.0
    if pending is not None:
        waited = (datetime.now(UTC) - pending.occurred_at).total_seconds()
    return {
        "stream_position": tail,
        "oldest_unpublished": pending.position if pending else None,
        "waiting_seconds": round(max(waited, 0.0), 3),
        "stalled": pending is not None and waited >= services.config.relay_stall_seconds,
    }


PROBE_BYTES = 64 * 1024


def disk_problem(services: Services) -> str | None:
    """Can the disk of each SQLite store still take writes? A full disk lets reads pass
    while every command fails, so write (and remove) a small probe file beside each."""
    for url in (services.config.database_url, services.config.read_store_url):
        if not url.startswith("sqlite:///"):
            continue
        probe = Path(url.removeprefix("sqlite:///")).parent / f".ready-probe-{os.getpid()}"
        try:
            with probe.open("wb") as handle:
                handle.write(b"\0" * PROBE_BYTES)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            return f"cannot write beside the store {url}: {error.strerror or error}"
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    return None
