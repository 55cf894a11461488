"""GET /api/v1/workflow-types and the seeds' /workflow-types path."""

from __future__ import annotations

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
