"""The workflow type registry over HTTP (and the seeds' ``/workflow-types`` path).

Built-in and file types come from the gateway's own registry; types defined over the API
are events of the registry aggregate, read from the store, so every gateway and engine
sees the same list.
"""

from __future__ import annotations

from typing import Any

from chorus.contracts.workflow_types import REGISTRY_ID, DefineWorkflowType, WorkflowType
from chorus.gateway.auth import can_read, require_roles
from chorus.gateway.bus import issue_command, replayed
from chorus.gateway.keys import Principal
from chorus.gateway.state import Services, ServicesDep
from chorus.projections import workflows as workflows_read_model
from litestar import Request, Response, get, post
from litestar.params import JSONBody


async def all_types(services: Services) -> list[WorkflowType]:
    records = await services.read_history("workflow_type", REGISTRY_ID, limit=10_000)
    defined = workflows_read_model.defined_types(records)
    return services.workflow_types.with_defined(defined).all()


@get(
    ["/api/v1/workflow-types", "/workflow-types"],
    guards=[can_read],
    tags=["workflows"],
    summary="Workflow types and their phases",
)
async def list_workflow_types(services: ServicesDep) -> dict[str, list[WorkflowType]]:
    return {"items": await all_types(services)}


@post(
    "/api/v1/workflow-types",
    guards=[require_roles("admin")],
    status_code=201,
    tags=["workflows"],
    summary="Define (or replace) a workflow type; workflows already started keep theirs",
)
async def define_workflow_type(
    request: Request[Principal, Any, Any], data: JSONBody[WorkflowType], services: ServicesDep
) -> Response[WorkflowType]:
    reply = await issue_command(services, request, "workflow_type", "define",
                                DefineWorkflowType(workflow_type=data))  # fmt: skip
    return Response(data, status_code=201, headers=replayed(reply))
