"""Work reaches agents, end to end under ``chorus up``: the agents' side.

Agents of three kinds (the SDK worker, ``chorus agent -- <script>``, a plain nats-py
subscriber) and the demo fleet of ``chorus up --demo`` take the work the engine hands out;
operators use only the HTTP API with the admin key from the banner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.agent_demo import FLEET

from .conftest import async_wait_until, free_port, running_chorus

WAIT = 90  # seconds: a bound on waiting for the system, never a timing check


async def agents(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    listed = (await http.get("/api/v1/agents", params={"limit": 100})).json()["items"]
    return {a["agent_id"]: a for a in listed}


@pytest.mark.e2e
async def test_chorus_up_demo_starts_a_fleet_that_registers_and_stays_online(
    tmp_path: Path,
) -> None:
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    with running_chorus(data_dir, free_port(), workdir, ("--demo",)) as up:
        assert "demo       agents demo-1, demo-2, demo-3" in up.output, up.output
        headers = {"Authorization": f"Bearer {up.admin_key}"}
        async with httpx.AsyncClient(base_url=up.base_url, headers=headers, timeout=30,
                                     trust_env=False) as http:  # fmt: skip

            async def fleet_online() -> bool:
                found = await agents(http)
                return all(found.get(n, {}).get("status") == "online" for n in FLEET)

            await async_wait_until(fleet_online, WAIT, "the demo fleet online")
            found = await agents(http)
        assert {found[n]["type"] for n in FLEET} == {"demo"}
        assert "review" in found["demo-1"]["capabilities"]
