"""The workflow type registry over HTTP (and the seeds' ``/workflow-types`` path)."""

from __future__ import annotations

from litestar import get

from contracts.workflow_types import WorkflowType
from gateway.auth import can_read
from gateway.state import ServicesDep


@get(
    ["/api/v1/workflow-types", "/workflow-types"],
    guards=[can_read],
    tags=["workflows"],
    summary="Workflow types and their phases",
)
async def list_workflow_types(services: ServicesDep) -> dict[str, list[WorkflowType]]:
    return {"items": services.workflow_types.all()}
