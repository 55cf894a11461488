"""Workflows over HTTP: start, follow, cancel, history; plus the seeds' paths."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from chorus.contracts import errors as codes
from chorus.contracts.bounds import MAX_POSITION
from chorus.contracts.sessions import Cancellation
from chorus.contracts.workflows import PRIORITIES, CancelWorkflow, StartWorkflow, WorkflowRequest
from chorus.gateway.auth import can_audit, can_read, can_write
from chorus.gateway.bus import derived_id, idempotency_key, issue_command, replayed
from chorus.gateway.errors import Problem, check_cursor
from chorus.gateway.history import AtVersion, EventPage, current_or_past, history_page
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services, ServicesDep
from chorus.projections import workflows as read_model
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from msgspec import Struct

#: The seed's statuses (queued, running, completed, failed) and cancelled.
STATUSES = ("queued", "running", "completed", "failed", "cancelled")


class WorkflowAccepted(Struct, kw_only=True):
    workflow_id: str
    #: The seed's name for the same id.
    session_id: str
    status: str
    message: str
    created_at: str | None
    estimated_completion: str | None
    command_status: str


def _check_choice(field: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise Problem(
            400, "validation_error", f"{field} must be one of: {', '.join(allowed)}",
            details={"fields": [{"field": field, "allowed": list(allowed),
                                 "message": f"invalid {field} {value!r}"}]},
        )  # fmt: skip


async def start_workflow(
    request: Request[Principal, Any, Any], data: WorkflowRequest, services: Services
) -> Response[WorkflowAccepted]:
    workflow_id = derived_id(request.user.actor, "workflow", idempotency_key(request.headers))
    payload = StartWorkflow(workflow_id=workflow_id, **msgspec.structs.asdict(data))
    reply = await issue_command(services, request, "workflow", "start", payload,
                                read_model=read_model.NAME, workflow_id=workflow_id)  # fmt: skip
    assert reply.aggregate_id is not None
    view = await services.read(read_model.get_workflow, reply.aggregate_id)
    return Response(
        WorkflowAccepted(
            workflow_id=reply.aggregate_id,
            session_id=reply.aggregate_id,
            status=view.status if view else "queued",
            message=view.message if view else "Workflow queued",
            created_at=view.created_at if view else None,
            estimated_completion=view.estimated_completion if view else None,
            command_status=reply.status,
        ),
        status_code=202,
        headers={"Location": f"/api/v1/workflows/{reply.aggregate_id}", **replayed(reply)},
    )


async def workflow_status(workflow_id: uuid.UUID, services: Services) -> read_model.WorkflowView:
    view = await services.read(read_model.get_workflow, str(workflow_id))
    if view is None:
        raise Problem(404, codes.WORKFLOW_NOT_FOUND, f"workflow {workflow_id} does not exist")
    return view  # type: ignore[no-any-return]


class WorkflowController(Controller):
    path = "/api/v1/workflows"
    tags = ["workflows"]
    #: Every route here is for readers at least; writes and audits narrow it further.
    guards = [can_read]

    @post("/", guards=[can_write], status_code=202, summary="Start a workflow")
    async def start(
        self,
        request: Request[Principal, Any, Any],
        data: JSONBody[WorkflowRequest],
        services: ServicesDep,
    ) -> Response[WorkflowAccepted]:
        return await start_workflow(request, data, services)

    @get(
        "/{workflow_id:uuid}",
        summary="A workflow's status and progress: current, or at a version or time (auditors)",
    )  # fmt: skip
    async def get_workflow(
        self,
        request: Request[Principal, Any, Any],
        workflow_id: FromPath[uuid.UUID],
        services: ServicesDep,
        at_version: AtVersion = None,
        as_of: FromQuery[str | None] = None,
    ) -> read_model.WorkflowView:
        return await current_or_past(
            request.user, services, "workflow", str(workflow_id), at_version, as_of,
            lambda: workflow_status(workflow_id, services),
        )  # fmt: skip

    @get("/", summary="List workflows, newest first")
    async def list_workflows(
        self,
        services: ServicesDep,
        status: FromQuery[str | None] = None,
        type: FromQuery[str | None] = None,
        priority: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        cursor: FromQuery[str | None] = None,
    ) -> read_model.WorkflowPage:
        _check_choice("status", status, STATUSES)
        _check_choice("priority", priority, PRIORITIES)
        check_cursor(cursor, read_model.decode_cursor)
        return await services.read(  # type: ignore[no-any-return]
            read_model.list_workflows, status=status, workflow_type=type, priority=priority,
            limit=limit, cursor=cursor,
        )  # fmt: skip

    @post("/{workflow_id:uuid}/cancel", guards=[can_write], status_code=200,
          summary="Cancel a workflow (its starter)")  # fmt: skip
    async def cancel(
        self,
        request: Request[Principal, Any, Any],
        workflow_id: FromPath[uuid.UUID],
        services: ServicesDep,
        data: JSONBody[Cancellation | None] = None,
    ) -> Response[read_model.WorkflowView]:
        payload = CancelWorkflow(
            workflow_id=str(workflow_id), reason=(data or Cancellation()).reason
        )
        reply = await issue_command(services, request, "workflow", "cancel", payload,
                                    read_model=read_model.NAME, workflow_id=str(workflow_id))  # fmt: skip
        return Response(await workflow_status(workflow_id, services), headers=replayed(reply))

    @get("/{workflow_id:uuid}/events", guards=[can_audit], summary="A workflow's history")
    async def events(
        self,
        workflow_id: FromPath[uuid.UUID],
        services: ServicesDep,
        after_version: Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 500,
    ) -> EventPage:
        return await history_page(services, "workflow", str(workflow_id), after_version, limit)


@post("/execute-workflow", guards=[can_write], status_code=202, tags=["workflows"],
      summary="Seed alias of POST /api/v1/workflows")  # fmt: skip
async def execute_workflow(
    request: Request[Principal, Any, Any], data: JSONBody[WorkflowRequest], services: ServicesDep
) -> Response[WorkflowAccepted]:
    return await start_workflow(request, data, services)


@get("/workflow-status/{workflow_id:uuid}", guards=[can_read], tags=["workflows"],
     summary="Seed alias of GET /api/v1/workflows/{id}")  # fmt: skip
async def workflow_status_alias(
    workflow_id: FromPath[uuid.UUID], services: ServicesDep
) -> read_model.WorkflowView:
    return await workflow_status(workflow_id, services)
