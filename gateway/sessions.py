"""Coordination sessions over HTTP: open, submit, cancel, query, history."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from msgspec import Meta, Struct

from contracts import errors as codes
from contracts.bounds import INT_MAX
from contracts.envelope import Reply
from contracts.sessions import (
    CancelSession,
    Capability,
    Id,
    LostPolicy,
    OpenSession,
    SessionId,
    SubmitResult,
    Task,
    ToolRef,
    require_tools,
)
from gateway.auth import can_audit, can_read, can_write
from gateway.bus import derived_id, idempotency_key
from gateway.errors import Problem, check_cursor
from gateway.history import AtVersion, EventPage, current_or_past, history_page
from gateway.keys import Principal
from gateway.ratelimit import check_session_quota
from gateway.state import Services, ServicesDep
from projections import sessions as read_model

STATUSES = ("open", "succeeded", "failed", "timed_out", "cancelled")


class OpenSessionBody(Struct, kw_only=True, forbid_unknown_fields=True):
    """Open a session. The opener is the caller's actor; ``coordinator_id`` defaults to it.

    Name ``participants``, or give ``size`` (and ``capabilities``) and the engine picks the
    most reliable online agents. ``on_participant_lost`` says what happens when one goes
    offline before submitting: ``wait``, ``fail_fast`` or ``replace``.
    """

    task: Task
    participants: Annotated[list[Id], Meta(max_length=1000)] = []
    capabilities: Annotated[list[Capability], Meta(max_length=100)] = []
    size: Annotated[int, Meta(ge=1, le=1000)] | None = None
    on_participant_lost: LostPolicy = "wait"
    timeout_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 600
    coordinator_id: Id | None = None
    session_id: SessionId | None = None
    #: Tools (``<server>/<tool>``) routed participants must be able to use.
    requires_tools: Annotated[list[ToolRef], Meta(max_length=100)] = []

    def __post_init__(self) -> None:
        require_tools(self)
        if self.participants and self.size is not None:
            raise ValueError("name participants or give a size to route by, not both")
        if not self.participants and self.size is None:
            raise ValueError("name participants, or give size (and capabilities) to route by")


class SubmitResultBody(Struct, kw_only=True, forbid_unknown_fields=True):
    result: dict[str, Any]
    success: bool = True
    output_hash: Annotated[str, Meta(max_length=200)] | None = None


class CancelBody(Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=2000)] = "cancelled"


class SessionCreated(Struct, kw_only=True):
    session_id: str
    status: str
    version: int
    command_status: str


class CommandOutcome(Struct, kw_only=True):
    session_id: str
    status: str
    version: int


def _replayed(reply: Reply) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if reply.status == "duplicate" else {}


async def _session_command(
    request: Request[Principal, Any, Any], services: Services, command: str, payload: Any
) -> Response[CommandOutcome]:
    """Issue a command on an existing session as the caller; answer once it is readable."""
    reply = await services.bus.send(
        request.user.actor,
        "session",
        command,
        payload,
        command_id=idempotency_key(request.headers),
        correlation_id=request.headers.get("x-correlation-id"),
    )
    await services.read_your_write(read_model.NAME, reply.position, session_id=payload.session_id)
    assert reply.version is not None
    return Response(
        CommandOutcome(session_id=payload.session_id, status=reply.status, version=reply.version),
        headers=_replayed(reply),
    )


class SessionController(Controller):
    path = "/api/v1/sessions"
    tags = ["sessions"]

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
        reply = await services.bus.send(
            principal.actor,
            "session",
            "open",
            OpenSession(
                session_id=session_id,
                participants=data.participants,
                capabilities=data.capabilities,
                size=data.size,
                on_participant_lost=data.on_participant_lost,
                task=data.task,
                timeout_seconds=data.timeout_seconds,
                coordinator_id=data.coordinator_id,
            ),
            command_id=command_id,
            correlation_id=request.headers.get("x-correlation-id"),
        )
        await services.read_your_write(read_model.NAME, reply.position, session_id=session_id)
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
            headers={"Location": f"/api/v1/sessions/{reply.aggregate_id}", **_replayed(reply)},
        )

    @post("/{session_id:uuid}/results", guards=[can_write], status_code=200,
          summary="Submit the caller's result")  # fmt: skip
    async def submit_result(
        self,
        request: Request[Principal, Any, Any],
        session_id: FromPath[uuid.UUID],
        data: JSONBody[SubmitResultBody],
        services: ServicesDep,
    ) -> Response[CommandOutcome]:
        payload = SubmitResult(
            session_id=str(session_id),
            result=data.result,
            success=data.success,
            output_hash=data.output_hash,
        )
        return await _session_command(request, services, "submit_result", payload)

    @post("/{session_id:uuid}/cancel", guards=[can_write], status_code=200,
          summary="Cancel a session (coordinator or opener)")  # fmt: skip
    async def cancel(
        self,
        request: Request[Principal, Any, Any],
        session_id: FromPath[uuid.UUID],
        services: ServicesDep,
        data: JSONBody[CancelBody | None] = None,
    ) -> Response[CommandOutcome]:
        payload = CancelSession(session_id=str(session_id), reason=(data or CancelBody()).reason)
        return await _session_command(request, services, "cancel", payload)

    @get(
        "/{session_id:uuid}", guards=[can_read],
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

    @get("/", guards=[can_read], summary="List sessions, newest first")
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
        after_version: Annotated[int, QueryParameter(ge=0, le=INT_MAX)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 500,
    ) -> EventPage:
        return await history_page(services, "session", str(session_id), after_version, limit)
