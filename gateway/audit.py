"""The auditor's API: the global log, signed exports and store verification.

Auditors and admins only. Everything here reads the event store (never the read models),
through ``chorus.projections.audit``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from chorus.contracts.bounds import MAX_POSITION
from chorus.gateway.auth import can_audit
from chorus.gateway.errors import Problem
from chorus.gateway.history import parse_time
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services, ServicesDep
from chorus.projections.audit import LogFilter, LogPage, Report
from litestar import Controller, Request, Response, get
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

NDJSON = "application/x-ndjson"
PAGE_LIMIT = 500
_encoder = msgspec.json.Encoder()


async def _ndjson(
    services: Services, after: int, where: LogFilter, limit: int | None
) -> AsyncIterator[bytes]:
    chunks = services.audit.stream(after, where, limit)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield b"".join(_encoder.encode(record) + b"\n" for record in chunk)


@get("/api/v1/events", guards=[can_audit], tags=["audit"],
     summary="The global log in position order; NDJSON stream with Accept: application/x-ndjson")  # fmt: skip
async def global_log(
    request: Request[Principal, Any, Any],
    services: ServicesDep,
    after: Annotated[
        int, QueryParameter(ge=0, le=MAX_POSITION, description="a position; next_after of a page")
    ] = 0,
    limit: Annotated[int | None, QueryParameter(ge=1, le=1000)] = None,
    aggregate: FromQuery[str | None] = None,
    event_type: Annotated[str | None, QueryParameter(name="type")] = None,
    actor: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
) -> Response[Any]:
    """A page of ``limit`` events (500 by default) after position ``after``, or, asked for
    NDJSON, every matching event up to the head as one stream (``limit`` only if given)."""
    where = LogFilter(
        aggregate=aggregate, type=event_type, actor=actor,
        since=parse_time("since", since), until=parse_time("until", until),
    )  # fmt: skip
    if NDJSON in request.headers.get("accept", ""):
        return Stream(_ndjson(services, after, where, limit), media_type=NDJSON)
    page: LogPage = await asyncio.to_thread(services.audit.page, after, limit or PAGE_LIMIT, where)
    return Response(page)


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]
    guards = [can_audit]

    @get("/export", summary="A signed bundle of a session's, a workflow's or a time range's events")
    async def export(
        self,
        services: ServicesDep,
        session: FromQuery[uuid.UUID | None] = None,
        workflow: FromQuery[uuid.UUID | None] = None,
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
    ) -> Response[bytes]:
        start, end = parse_time("since", since), parse_time("until", until)
        chosen = [
            n for n, v in (("session", session), ("workflow", workflow), ("since", start)) if v
        ]
        if len(chosen) != 1 or (start is None) != (end is None):
            raise Problem(
                400, "invalid_parameter",
                "give one of: session, workflow, or since with until",
                details={"fields": ["session", "workflow", "since", "until"]},
            )  # fmt: skip
        if session or workflow:
            aggregate = "session" if session else "workflow"
            aggregate_id = session or workflow
            if not await services.read_history(aggregate, str(aggregate_id), limit=1):
                raise Problem(
                    404, f"{aggregate}_not_found", f"{aggregate} {aggregate_id} does not exist"
                )
            name = f"{aggregate}-{aggregate_id}"
            data = await self._export(services, aggregate=aggregate, aggregate_id=aggregate_id)
        else:
            assert start is not None
            assert end is not None
            name = f"{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}"
            data = await self._export(services, since=start, until=end)
        return Response(
            data,
            media_type=NDJSON,
            headers={
                "Content-Disposition": f'attachment; filename="chorus-audit-{name}.ndjson"',
                "Chorus-Public-Key": await asyncio.to_thread(services.audit.public_key),
            },
        )

    @staticmethod
    async def _export(services: Services, **selection: Any) -> bytes:
        try:
            return await asyncio.to_thread(lambda: services.audit.export(**selection))
        except (OSError, ValueError) as error:
            raise Problem(
                503, "signing_key_unavailable", f"cannot sign the bundle: {error}"
            ) from None

    @get("/public-key", summary="The Ed25519 public key that verifies exported bundles")
    async def public_key(self, services: ServicesDep) -> dict[str, str]:
        try:
            key = await asyncio.to_thread(services.audit.public_key)
        except (OSError, ValueError) as error:
            raise Problem(503, "signing_key_unavailable", str(error)) from None
        return {"algorithm": "Ed25519", "public_key": key}

    @get("/verify", summary="Verify every event, hash chain and seal of the store")
    async def verify(self, services: ServicesDep) -> Report:
        return await asyncio.to_thread(services.audit.verify)
