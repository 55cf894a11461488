"""Coordination sessions over HTTP: open, submit, cancel, query, history."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from chorus.contracts import errors as codes
from chorus.contracts.bounds import MAX_POSITION
from chorus.contracts.sessions import (
    Cancellation,
    CancelSession,
    OpenSession,
    ResultRequest,
    SessionId,
    SessionRequest,
    SubmitResult,
)
from chorus.gateway.auth import can_audit, can_read, can_write
from chorus.gateway.bus import derived_id, idempotency_key, issue_command, replayed
from chorus.gateway.errors import Problem, check_cursor
from chorus.gateway.history import AtVersion, EventPage, current_or_past, history_page
from chorus.gateway.keys import Principal
from chorus.gateway.ratelimit import check_session_quota
from chorus.gateway.state import Services, ServicesDep
from chorus.projections import sessions as read_model
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from msgspec import Struct

STATUSES = ("open", "succeeded", "failed", "timed_out", "cancelled")


class OpenSessionBody(SessionRequest, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Open a session (``SessionRequest``); the opener is the caller's actor. Without a
    ``session_id`` the gateway derives one (from the Idempotency-Key when given)."""

    session_id: SessionId | None = None


class SessionCreated(Struct, kw_only=True):
    session_id: str
    status: str
    version: int
    command_status: str


class CommandOutcome(Struct, kw_only=True):
    session_id: str
    status: str
    version: int


async def _session_command(
    request: Request[Principal, Any, Any], services: Services, command: str, payload: Any
) -> Response[CommandOutcome]:
    """Issue a command on an existing session as the caller; answer once it is readable."""
    reply = await issue_command(services, request, "session", command, payload,
                                read_model=read_model.NAME, session_id=payload.session_id)  # fmt: skip
    assert reply.version is not None
    return Response(
        CommandOutcome(session_id=payload.session_id, status=reply.status, version=reply.version),
        headers=replayed(reply),
    )


class SessionController(Controller):
    path = "/api/v1/sessions"
    tags = ["sessions"]
    #: Every route here is for readers at least; writes and audits narrow it further.
    guards = [can_read]

    @post("/", guards=[can_write], status_code=201, summary="Open a coordination session")
    async def open_session(
        self,
        request: Request[Principal, Any, Any],
        data: JSONBody[OpenSessionBody],
        services: ServicesDep,
    ) -> Response[SessionCreated]:
        principal = request.user
        command_id = idempotency_key(request.headers)
        session_id = data.session_id or derived_id(principal.actor, "session", command_id)
        await check_session_quota(services, principal, str(session_id), data.participants)
        fields = msgspec.structs.asdict(data) | {"session_id": session_id}
        reply = await issue_command(services, request, "session", "open", OpenSession(**fields),
                                    read_model=read_model.NAME, session_id=session_id)  # fmt: skip
        assert reply.aggregate_id is not None
        assert reply.version is not None
        # A replay may come long after: say what the session is now, not what it was.
        view = await services.read(read_model.get_session, reply.aggregate_id)
        return Response(
            SessionCreated(
                session_id=reply.aggregate_id,
                status=view.status if view is not None else "open",
                version=reply.version,
                command_status=reply.status,
            ),
            status_code=201,
            headers={"Location": f"/api/v1/sessions/{reply.aggregate_id}", **replayed(reply)},
        )

    @post("/{session_id:uuid}/results", guards=[can_write], status_code=200,
          summary="Submit the caller's result")  # fmt: skip
    async def submit_result(
        self,
        request: Request[Principal, Any, Any],
        session_id: FromPath[uuid.UUID],
        data: JSONBody[ResultRequest],
        services: ServicesDep,
    ) -> Response[CommandOutcome]:
        payload = SubmitResult(session_id=str(session_id), **msgspec.structs.asdict(data))
        return await _session_command(request, services, "submit_result", payload)

    @post("/{session_id:uuid}/cancel", guards=[can_write], status_code=200,
          summary="Cancel a session (coordinator or opener)")  # fmt: skip
    async def cancel(
        self,
        request: Request[Principal, Any, Any],
        session_id: FromPath[uuid.UUID],
        services: ServicesDep,
        data: JSONBody[Cancellation | None] = None,
    ) -> Response[CommandOutcome]:
        payload = CancelSession(session_id=str(session_id), reason=(data or Cancellation()).reason)
        return await _session_command(request, services, "cancel", payload)

    @get(
        "/{session_id:uuid}",
        summary="A session's state: current, or at a version or time (auditors)",
    )  # fmt: skip
    async def get_session(
        self,
        request: Request[Principal, Any, Any],
        session_id: FromPath[uuid.UUID],
        services: ServicesDep,
        at_version: AtVersion = None,
        as_of: FromQuery[str | None] = None,
    ) -> read_model.SessionView:
        async def current() -> read_model.SessionView:
            view = await services.read(read_model.get_session, str(session_id))
            if view is None:
                raise Problem(404, codes.SESSION_NOT_FOUND, f"session {session_id} does not exist")
            return read_model.visible_to(view, request.user.actor, request.user.role)

        return await current_or_past(
            request.user, services, "session", str(session_id), at_version, as_of, current
        )

    @get("/", summary="List sessions, newest first")
    async def list_sessions(
        self,
        request: Request[Principal, Any, Any],
        services: ServicesDep,
        status: FromQuery[str | None] = None,
        participant: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: FromQuery[str | None] = None,
    ) -> read_model.SessionPage:
        if status is not None and status not in STATUSES:
            raise Problem(
                400, "invalid_parameter", f"status must be one of: {', '.join(STATUSES)}",
                details={"field": "status", "allowed": list(STATUSES)},
            )  # fmt: skip
        check_cursor(cursor, read_model.decode_cursor)
        page: read_model.SessionPage = await services.read(
            read_model.list_sessions, status=status, participant=participant, limit=limit,
            cursor=cursor,
        )  # fmt: skip
        actor, role = request.user.actor, request.user.role
        page.items = [read_model.visible_to(view, actor, role) for view in page.items]
        return page

    @get(
        "/{session_id:uuid}/events", guards=[can_audit], summary="A session's history, oldest first"
    )
    async def events(
        self,
        session_id: FromPath[uuid.UUID],
        services: ServicesDep,
        after_version: Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 500,
    ) -> EventPage:
        return await history_page(services, "session", str(session_id), after_version, limit)
