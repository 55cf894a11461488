"""``chorus up`` end to end: the embedded deployment as an operator and agents see it.

One module-scoped scenario runs the whole system once (nats-server, engine, projector and
gateway as real processes), drives it over HTTP, WebSocket and raw NATS, stops it with
SIGTERM and records what happened; the tests below each check one promise against that
record. Two tests then reuse the stopped data dir: a read-model rebuild, and a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .conftest import (
    ChorusUp,
    StopReport,
    assert_clean_stop,
    async_wait_until,
    clean_env,
    cli,
    cmd_subject,
    create_key,
    free_port,
    request_until_answered,
    running_chorus,
    sqlite_rows,
    sqlite_url,
    submit_body,
)

pytestmark = pytest.mark.e2e

AGENTS_A = ["agent-1", "agent-2", "agent-3"]
AGENTS_B = ["agent-1", "agent-2"]


@dataclass
class Scenario:
    data_dir: Path
    workdir: Path
    nats_url: str
    admin_key: str | None
    operator_key: str
    auditor_key: str
    children: dict[str, str]
    session_a: str
    session_b: str
    open_replies: dict[str, dict[str, Any]] = field(default_factory=dict)

    def chorus(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A ``chorus`` command against this scenario's stores, after ``chorus up`` ended."""
        return subprocess.run(
            cli(*args),
            cwd=self.workdir,
            env=clean_env(
                CHORUS_DATA_DIR=str(self.data_dir),
                CHORUS_DATABASE_URL=sqlite_url(self.data_dir / "events.db"),
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    agent_replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    view_a: dict[str, Any] = field(default_factory=dict)
    view_b: dict[str, Any] = field(default_factory=dict)
    events_a: list[dict[str, Any]] = field(default_factory=list)
    feed_a: list[dict[str, Any]] = field(default_factory=list)
    feed_other: list[str] = field(default_factory=list)
    ready: dict[str, Any] = field(default_factory=dict)
    ready_headers: dict[str, str] = field(default_factory=dict)
    stop: StopReport | None = None


# Driving the system -------------------------------------------------------------------------


async def open_session(
    http: httpx.AsyncClient, session_id: str, participants: list[str], **body: Any
) -> dict[str, Any]:
    """POST /api/v1/sessions; retried with the same Idempotency-Key while no engine answers."""
    payload = {
        "session_id": session_id,
        "participants": participants,
        "task": {"description": f"e2e task {session_id}"},
        **body,
    }
    headers = {"Idempotency-Key": f"open-{session_id}"}

    async def attempt() -> dict[str, Any] | None:
        response = await http.post("/api/v1/sessions", json=payload, headers=headers)
        if response.status_code == 503:  # the engine may still be subscribing
            return None
        assert response.status_code == 201, response.text
        return dict(response.json())

    return await async_wait_until(attempt, 60, f"session {session_id} to open", interval=0.2)


async def get_view(http: httpx.AsyncClient, session_id: str) -> dict[str, Any] | None:
    response = await http.get(f"/api/v1/sessions/{session_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_for_status(http: httpx.AsyncClient, session_id: str, status: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        view = await get_view(http, session_id)
        return view if view is not None and view["status"] == status else None

    return await async_wait_until(reached, 30, f"session {session_id} to be {status}", 0.1)


async def agent_submit(nc: NATS, agent: str, session_id: str, success: bool) -> dict[str, Any]:
    """An agent on raw nats-py (connected with its own key): one request on its own
    subject, retried until answered."""
    body = submit_body(
        f"{agent}-{session_id}", session_id, {"agent": agent, "ok": success}, success=success
    )
    return await request_until_answered(nc, cmd_subject(agent, "submit_result"), body, timeout=5)


async def collect_feed(
    ws: ClientConnection, records: list[dict[str, Any]], other: list[str]
) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            text = message if isinstance(message, str) else message.decode()
            parsed = json.loads(text)
            if isinstance(parsed, dict) and "position" in parsed:
                records.append(parsed)
            else:
                other.append(text)


async def drive(up: ChorusUp, scenario: Scenario) -> None:
    headers = {"Authorization": f"Bearer {scenario.operator_key}"}
    async with httpx.AsyncClient(
        base_url=up.base_url, headers=headers, timeout=30, trust_env=False
    ) as http:
        a, b = scenario.session_a, scenario.session_b
        scenario.open_replies["A"] = await open_session(
            http, a, AGENTS_A, timeout_seconds=600,
            task={"description": "majority task", "criteria": {"require": "majority", "min_results": 2}},
        )  # fmt: skip

        # The feed on A, opened before any agent submits, replaying from position 0.
        ws = await connect(
            f"{up.ws_url}/api/v1/sessions/{a}/feed?since=0",
            additional_headers=headers,
            proxy=None,
        )
        feed = asyncio.create_task(collect_feed(ws, scenario.feed_a, scenario.feed_other))
        # Each agent on the bus with its own key, before B's short deadline starts.
        agents = {name: await up.bus(name, name=f"e2e-{name}") for name in AGENTS_A}
        try:
            # B times out after 2 s; only agent-1 submits to it, right away.
            scenario.open_replies["B"] = await open_session(http, b, AGENTS_B, timeout_seconds=2)
            scenario.agent_replies["B/agent-1"] = await agent_submit(
                agents["agent-1"], "agent-1", b, True
            )

            results = await asyncio.gather(
                *(
                    agent_submit(agents[agent], agent, a, success)
                    for agent, success in zip(AGENTS_A, (True, True, False), strict=True)
                )
            )
            for agent, reply in zip(AGENTS_A, results, strict=True):
                scenario.agent_replies[f"A/{agent}"] = reply

            scenario.view_a = await wait_for_status(http, a, "succeeded")
            scenario.view_b = await wait_for_status(http, b, "timed_out")

            response = await http.get(
                f"/api/v1/sessions/{a}/events",
                headers={"Authorization": f"Bearer {scenario.auditor_key}"},
            )
            assert response.status_code == 200, response.text
            scenario.events_a = response.json()["items"]

            # Let the feed catch up with the history, then give it time to show a duplicate.
            async def feed_has_all() -> bool:
                return len(scenario.feed_a) >= len(scenario.events_a)

            await async_wait_until(feed_has_all, 30, "the feed to deliver A's events")
            await asyncio.sleep(1.0)
        finally:
            for nc in agents.values():
                await nc.close()
            await ws.close()
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed

        # The projector has seen everything before we stop (for the rebuild comparison).
        async def settled() -> dict[str, Any] | None:
            response = await http.get("/ready")
            body = dict(response.json())
            lag = body["checks"]["projections"]["sessions"]["lag"]
            scenario.ready_headers = {k.lower(): v for k, v in response.headers.items()}
            return body if response.status_code == 200 and lag == 0 else None

        scenario.ready = await async_wait_until(settled, 30, "the projector to reach the head")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    workdir = tmp_path_factory.mktemp("chorus-up")
    data_dir = workdir / "data"
    up = ChorusUp(data_dir, free_port(), workdir)
    try:
        up.start()
        operator_key = create_key(data_dir, "operator-1", "operator")
        auditor_key = create_key(data_dir, "auditor-1", "auditor")
        result = Scenario(
            data_dir=data_dir,
            workdir=workdir,
            nats_url=up.nats_url or "",
            admin_key=up.admin_key,
            operator_key=operator_key,
            auditor_key=auditor_key,
            children={role: str(info) for role, info in up.children.items()},
            session_a=str(uuid.uuid4()),
            session_b=str(uuid.uuid4()),
        )
        asyncio.run(drive(up, result))
    except BaseException as error:
        report = up.stop()
        logs = "\n".join(f"--- {r} ---\n{up.log_tail(r)}" for r in ("engine", "project", "gateway"))
        raise AssertionError(f"scenario failed: {error!r}\n{report.output}\n{logs}") from error
    result.stop = up.stop()
    return result


# The tests -------------------------------------------------------------------------------------


def test_banner_names_embedded_nats_and_admin_key(scenario: Scenario) -> None:
    # No secret in it: each API key is its own NATS credential.
    assert re.match(r"^nats://127\.0\.0\.1:\d+$", scenario.nats_url)
    assert scenario.admin_key is not None
    assert scenario.admin_key.startswith("chk_")
    assert set(scenario.children) >= {"nats-server", "engine", "relay", "project", "gateway"}


def test_sigterm_stops_everything_without_orphans(scenario: Scenario) -> None:
    assert scenario.stop is not None
    assert_clean_stop(scenario.stop)
    assert "chorus: stopping" in scenario.stop.output


def test_majority_session_succeeds(scenario: Scenario) -> None:
    for agent in AGENTS_A:
        assert scenario.agent_replies[f"A/{agent}"]["status"] == "accepted", scenario.agent_replies
    assert scenario.open_replies["A"]["status"] == "open"
    view = scenario.view_a
    assert view["status"] == "succeeded"
    assert view["participants"] == AGENTS_A
    assert view["pending"] == []
    assert {agent: r["success"] for agent, r in view["results"].items()} == {
        "agent-1": True, "agent-2": True, "agent-3": False,
    }  # fmt: skip
    assert view["opened_by"] == "operator-1"
    assert view["outcome"]["outcome"] == "succeeded"
    assert view["outcome"]["verdict"]["results"] == 3
    assert view["outcome"]["verdict"]["succeeded"] == 2
    assert view["version"] == 5  # opened, three results, finalised


def test_session_without_all_results_times_out(scenario: Scenario) -> None:
    assert scenario.agent_replies["B/agent-1"]["status"] == "accepted"
    view = scenario.view_b
    assert view["status"] == "timed_out"
    assert view["pending"] == ["agent-2"]
    assert list(view["results"]) == ["agent-1"]
    assert view["outcome"] == {
        "outcome": "timed_out", "reason": "deadline passed", "pending": ["agent-2"],
    }  # fmt: skip


def test_feed_delivers_every_event_once_in_order(scenario: Scenario) -> None:
    history = scenario.events_a
    feed = scenario.feed_a
    assert scenario.feed_other == []
    assert [e["type"] for e in history] == [
        "SessionOpened", "ResultSubmitted", "ResultSubmitted", "ResultSubmitted",
        "SessionFinalised",
    ]  # fmt: skip
    assert [e["version"] for e in history] == [1, 2, 3, 4, 5]
    positions = [e["position"] for e in feed]
    assert len(positions) == len(set(positions)), f"duplicates on the feed: {positions}"
    assert positions == sorted(positions)
    assert positions == [e["position"] for e in history]
    assert [(e["type"], e["version"], e["hash"]) for e in feed] == [
        (e["type"], e["version"], e["hash"]) for e in history
    ]
    assert feed == history


def test_rebuild_matches_live_read_model(scenario: Scenario) -> None:
    assert scenario.stop is not None and scenario.stop.returncode == 0
    live = scenario.data_dir / "read.db"
    rebuilt = scenario.workdir / "rebuilt.db"
    done = scenario.chorus("project", "--rebuild", "--read-store-url", sqlite_url(rebuilt))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt sessions" in done.stdout
    for sql in (
        "SELECT * FROM sessions ORDER BY seq",
        "SELECT * FROM session_participants ORDER BY session_id, agent_id",
    ):
        rebuilt_rows = sqlite_rows(rebuilt, sql)
        live_rows = sqlite_rows(live, sql)
        assert rebuilt_rows == live_rows, sql
        assert live_rows, f"no rows for {sql}"
    tracking = "SELECT position FROM tracking WHERE name='sessions'"
    assert sqlite_rows(rebuilt, tracking) == sqlite_rows(live, tracking)
    with contextlib.closing(sqlite3.connect(live)) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 2


def test_restart_keeps_data_and_prints_no_new_admin_key(scenario: Scenario) -> None:
    assert scenario.stop is not None and scenario.stop.returncode == 0
    with running_chorus(scenario.data_dir, free_port(), scenario.workdir) as up:
        assert "Admin API key" not in up.output
        assert up.admin_key is None
        assert "Chorus is up" in up.output

        async def check() -> tuple[dict[str, Any], dict[str, Any]]:
            async with httpx.AsyncClient(base_url=up.base_url, timeout=30, trust_env=False) as http:
                for key in (scenario.operator_key, scenario.admin_key):
                    headers = {"Authorization": f"Bearer {key}"}
                    response = await http.get(
                        f"/api/v1/sessions/{scenario.session_a}", headers=headers
                    )
                    assert response.status_code == 200, response.text
                    view_a = dict(response.json())
                    response = await http.get(
                        f"/api/v1/sessions/{scenario.session_b}", headers=headers
                    )
                    assert response.status_code == 200, response.text
                    view_b = dict(response.json())
                return view_a, view_b

        view_a, view_b = asyncio.run(check())
        assert view_a == scenario.view_a
        assert view_b == scenario.view_b


def test_admin_key_is_shown_by_the_first_start_that_succeeds(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # A first start that fails early: the embedded nats-server's directory is a plain file.
    blocker = data_dir / "nats"
    blocker.write_text("not a directory")
    failed = subprocess.run(
        cli("up", "--data-dir", str(data_dir), "--port", str(free_port())),
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Preconditions (RuntimeError: a broken set-up, not the behaviour under test).
    if failed.returncode == 0 or "chk_" in failed.stdout + failed.stderr:
        raise RuntimeError(f"the first start was meant to fail without a key:\n{failed}")
    blocker.unlink()
    with running_chorus(data_dir, free_port(), tmp_path) as up:
        assert up.admin_key is not None, f"no admin key was ever shown:\n{up.output}"


def test_the_record_chorus_up_wrote_verifies(scenario: Scenario) -> None:
    """The engine's sealer ran under ``chorus up``: the store and its seals agree."""
    assert scenario.stop is not None and scenario.stop.returncode == 0
    done = scenario.chorus("audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: "), done.stdout
    with contextlib.closing(sqlite3.connect(scenario.data_dir / "events.db")) as conn:
        assert conn.execute("SELECT count(*) FROM chorus_seals").fetchone()[0] > 0
    # The engine signed the anchor with the deployment's key, and verify checked it.
    anchor = (scenario.data_dir / "audit" / "seal-anchor").read_text()
    assert " sig=" in anchor, anchor
    assert "matches anchor" in done.stdout, done.stdout


def test_the_gateway_sends_security_headers_and_no_server_banner(scenario: Scenario) -> None:
    headers = scenario.ready_headers
    assert "server" not in headers, headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


def test_every_data_file_is_owner_only(scenario: Scenario) -> None:
    """events.db, read.db, keys.db, the NATS store, secrets and logs: 0600 in 0700 dirs."""
    paths = [scenario.data_dir, *scenario.data_dir.rglob("*")]
    names = {p.name for p in paths}
    assert {"events.db", "read.db", "keys.db", "jwt.secret", "gateway.log"} <= names, names
    loose = {
        str(p.relative_to(scenario.data_dir)): oct(p.stat().st_mode & 0o777)
        for p in paths
        if not p.is_symlink() and p.stat().st_mode & 0o077
    }
    assert not loose, loose
