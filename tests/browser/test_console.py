"""The web console in a real browser: Debian's headless Chromium driven by Playwright.

Against a real gateway, engine and projector: sign in with an API key, start a workflow
through the API, drive it over the bus as an agent, and watch the console's row move to
``completed`` without a reload; every request the page makes stays on the gateway (the
console works offline). A screenshot is saved as an artifact (``CHORUS_TEST_ARTIFACTS``,
else the test's temporary directory).

Chromium comes from ``tests/browser/conftest.py`` (skipped only where it is missing and
this is not CI; in CI it must run).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from chorus.bootstrap import EngineService
from chorus.projections.runner import ProjectionRunner
from nats.aio.client import Client as NATS

from tests.browser.conftest import SHOWS
from tests.conftest import Gateway
from tests.integration.test_bus import send


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CHORUS_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def drive(nc: NATS, agent: str, command: str, **payload: Any) -> None:
    reply = await send(nc, agent, command, payload, aggregate="workflow")
    assert reply["status"] == "accepted", reply


async def test_console_follows_a_workflow_live_without_reload(
    engine: EngineService,
    projector: ProjectionRunner,
    gateway: Gateway,
    nc: NATS,
    browser: Any,
    tmp_path: Path,
) -> None:
    admin = gateway.key("admin-1", "admin")["Authorization"].removeprefix("Bearer ")
    ops = gateway.key("ops-1", "operator")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for name, capabilities in (("agent-1", ["python"]), ("agent-2", ["review"]),
                                   ("agent-3", ["review", "python"])):  # fmt: skip
            await http.post("/api/v1/agents", headers=gateway.key(name),
                            json={"name": name, "capabilities": capabilities})  # fmt: skip
        # A session in flight, so the screenshot shows one.
        opened = await http.post(
            "/api/v1/sessions", headers=ops,
            json={"participants": ["agent-2", "agent-3"], "task": {"description": "review"}},
        )  # fmt: skip
        assert opened.status_code == 201, opened.text
        await send(nc, "agent-2", "submit_result",
                   {"session_id": opened.json()["session_id"], "result": {"verdict": "lgtm"}})  # fmt: skip
        # A completion claim, so agent-2's row has a verdict for its sparkline.
        claimed = await http.post(
            "/api/v1/agents/agent-2/verify-completion", headers=gateway.key("agent-2"),
            json={"task_id": opened.json()["session_id"], "output_hash": "sha256:ab",
                  "completion_time": datetime.now(UTC).isoformat()},
        )  # fmt: skip
        assert claimed.status_code == 200, claimed.text
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        hosts: set[str] = set()
        page.on("request", lambda request: hosts.add(urlparse(request.url).netloc))
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))

        await page.goto(gateway.url + "/")
        assert page.url.endswith("/console")
        await page.fill("#key", admin)
        await page.click("#signin button[type=submit]")
        await page.wait_for_selector("#live.on", timeout=SHOWS)
        assert await page.text_content("#who") == "admin-1 (admin)"
        await page.wait_for_selector('#agents tr[data-id="agent-1"]', timeout=SHOWS)
        await page.wait_for_selector('#agents tr[data-id="agent-2"] svg.spark rect', timeout=SHOWS)
        loaded = len(navigations)

        started = await http.post(
            "/api/v1/workflows",
            json={"requirements": "ship the console", "workflow_type": "quick"},
            headers=ops,
        )
        assert started.status_code == 202, started.text
        wid = started.json()["workflow_id"]
        row = f'#workflows tr[data-id="{wid}"]'
        await page.wait_for_selector(f'{row}[data-status="queued"]', timeout=SHOWS)

        # The operator hands the phase to agent-1 (the engine lets only the starter, an
        # operator or the agent the dispatcher offered it to start a phase).
        await drive(nc, "ops-1", "start_phase", workflow_id=wid, phase="implement",
                    assignee="agent-1")  # fmt: skip
        await page.wait_for_selector(f'{row}[data-status="running"]', timeout=SHOWS)
        assert "implement" in (await page.text_content(row) or "")
        await page.wait_for_selector('#agents tr[data-id="agent-1"][data-status="busy"]',
                                     timeout=SHOWS)  # fmt: skip
        await drive(nc, "agent-1", "report_progress", workflow_id=wid, phase="implement",
                    progress=50)  # fmt: skip
        await page.wait_for_function(
            "sel => (document.querySelector(sel)?.textContent || '').includes('25%')",
            arg=row, timeout=SHOWS,
        )  # fmt: skip
        for phase in ("implement", "test"):
            if phase != "implement":
                await drive(nc, "ops-1", "start_phase", workflow_id=wid, phase=phase,
                            assignee="agent-1")  # fmt: skip
            await drive(nc, "agent-1", "complete_phase", workflow_id=wid, phase=phase,
                        result={"phase": phase})  # fmt: skip
        await page.wait_for_selector(f'{row}[data-status="completed"]', timeout=SHOWS)
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#tail li')]"
            ".some(li => li.textContent.includes('WorkflowCompleted'))",
            timeout=SHOWS,
        )
        await page.wait_for_selector('#agents tr[data-id="agent-1"][data-status="online"]',
                                     timeout=SHOWS)  # fmt: skip

        await page.wait_for_function(
            "() => document.querySelector('#overview').textContent.includes('1 completed')",
            timeout=SHOWS,
        )
        assert len(navigations) == loaded, f"the page reloaded: {navigations}"
        gateway_host = urlparse(gateway.url).netloc
        assert hosts == {gateway_host}, f"the console reached other hosts: {hosts}"
        shot = artifacts(tmp_path) / "console.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"console screenshot: {shot}")


async def test_an_agent_key_sees_the_console_without_event_contents(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway, browser: Any
) -> None:
    key = gateway.key("agent-7", "agent")["Authorization"].removeprefix("Bearer ")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        await http.post("/api/v1/agents", headers={"Authorization": f"Bearer {key}"},
                        json={"name": "agent-7"})  # fmt: skip
    page = await browser.new_page()
    await page.goto(gateway.url + "/console")
    await page.fill("#key", key)
    await page.click("#signin button[type=submit]")
    await page.wait_for_selector("#live.on", timeout=SHOWS)
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#tail li')]"
        ".some(li => li.textContent.includes('AgentRegistered'))",
        timeout=SHOWS,
    )
    assert await page.text_content("#who") == "agent-7 (agent)"
    # Auditors' tools are not offered to an agent.
    await page.click('#agents tr[data-id="agent-7"]')
    await page.wait_for_selector("#detail:not([hidden])", timeout=SHOWS)
    assert await page.is_hidden("#detail-travel")


async def test_a_wrong_key_is_refused_with_a_message(gateway: Gateway, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(gateway.url + "/console")
    await page.fill("#key", "chk_not_a_key")
    await page.click("#signin button[type=submit]")
    await page.wait_for_function(
        "() => document.querySelector('#signin-error').textContent.includes('Sign-in failed')",
        timeout=SHOWS,
    )
    assert await page.is_hidden("#app")


async def test_a_short_lived_jwt_signs_in_as_its_key_would(
    engine: EngineService, projector: ProjectionRunner, gateway: Gateway, browser: Any
) -> None:
    """A browser need not hold a long-lived key: the token ``POST /api/v1/auth/token``
    gives for it signs in to the console with the same actor and role."""
    ops = gateway.key("ops-2", "operator")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        exchanged = await http.post("/api/v1/auth/token", headers=ops)
    assert exchanged.status_code == 200, exchanged.text
    token = exchanged.json()["access_token"]
    assert not token.startswith("chk_")
    page = await browser.new_page()
    await page.goto(gateway.url + "/console")
    await page.fill("#key", token)
    await page.click("#signin button[type=submit]")
    await page.wait_for_selector("#live.on", timeout=SHOWS)
    assert await page.text_content("#who") == "ops-2 (operator)"
