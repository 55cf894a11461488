"""GET /api/v1/workflow-types and the seeds' /workflow-types path."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Gateway


@pytest.mark.parametrize("path", ["/api/v1/workflow-types", "/workflow-types"])
async def test_workflow_types_are_listed_with_their_phases(gateway: Gateway, path: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.get(path, headers=gateway.key("auditor-1", "auditor"))
        unauthenticated = await http.get(path)
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()["items"]}
    assert set(types) >= {"full", "quick", "review"}
    assert [p["name"] for p in types["full"]["phases"]] == [
        "requirements", "design", "implement", "test", "review",
    ]  # fmt: skip
    assert all(p["expected_seconds"] > 0 for p in types["full"]["phases"])
    assert unauthenticated.status_code == 401


async def test_an_admin_defines_a_type_that_workflows_can_use_at_once(
    engine: Any, projector: Any, gateway: Gateway
) -> None:
    new_type = {
        "name": "triage",
        "description": "Sort incoming reports",
        "phases": [{"name": "classify", "expected_seconds": 60}, {"name": "assign"}],
    }
    admin = gateway.key("root", "admin")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        forbidden = await http.post(
            "/api/v1/workflow-types", json=new_type, headers=gateway.key("ops", "operator")
        )
        assert forbidden.status_code == 403
        invalid = await http.post(
            "/api/v1/workflow-types",
            json={**new_type, "phases": [{"name": "a"}, {"name": "a"}]},
            headers=admin,
        )
        assert invalid.status_code == 400
        created = await http.post("/api/v1/workflow-types", json=new_type, headers=admin)
        assert created.status_code == 201, created.text
        listed = (await http.get("/api/v1/workflow-types", headers=admin)).json()["items"]
        assert [p["name"] for p in next(t for t in listed if t["name"] == "triage")["phases"]] == [
            "classify",
            "assign",
        ]
        started = await http.post(
            "/api/v1/workflows",
            json={"requirements": "sort these", "workflow_type": "triage"},
            headers=admin,
        )
        assert started.status_code == 202, started.text
        view = (
            await http.get(f"/api/v1/workflows/{started.json()['workflow_id']}", headers=admin)
        ).json()
        assert view["phases"] == ["classify", "assign"]
