"""``chorus up`` under SIGKILL: of a child (it is restarted), and of the supervisor itself
(its children follow it, so nothing is orphaned)."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import (
    ChorusUp,
    children_of,
    create_key,
    free_port,
    kill_all,
    processes_of,
    role_of,
    running_chorus,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.kill]


def test_supervisor_restarts_a_sigkilled_engine(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_chorus(data_dir, free_port(), tmp_path) as up:
        assert up.process is not None
        key = create_key(data_dir, "operator-1", "operator")
        old = up.children["engine"]
        up.seen_pids.add(old.pid)
        # SIGKILL the engine child; the supervisor must notice and start a new one.
        os.kill(old.pid, signal.SIGKILL)

        def new_engine() -> int | None:
            for child in children_of(up.process.pid):  # type: ignore[union-attr]
                if role_of(child) == "engine" and child.pid != old.pid:
                    up.seen_pids.add(child.pid)
                    return child.pid
            return None

        wait_until(new_engine, 30, "a new engine process")
        wait_until(lambda: "engine exited with -9" in up.output, 10, "the supervisor's notice")

        # Commands work again (503 engine_unavailable until the new engine subscribes).
        session_id = str(uuid.uuid4())
        body = {"session_id": session_id, "participants": ["agent-1"], "task": {"description": "t"}}
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"open-{session_id}"}
        with httpx.Client(base_url=up.base_url, timeout=30, trust_env=False) as http:

            def opened() -> bool:
                response = http.post("/api/v1/sessions", json=body, headers=headers)
                assert response.status_code in (201, 503), response.text
                return response.status_code == 201

            wait_until(opened, 30, "the session to open after the restart", interval=0.2)
            response = http.get(f"/api/v1/sessions/{session_id}", headers=headers)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "open"


def test_sigkilled_supervisor_leaves_no_orphans(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    up = ChorusUp(data_dir, free_port(), tmp_path)
    try:
        up.start()
        assert up.process is not None
        pids = {role: child.pid for role, child in up.children.items()}
        assert set(pids) >= {"nats-server", "engine", "relay", "project", "gateway"}
        up.process.send_signal(signal.SIGKILL)
        up.process.wait(10)

        def all_gone() -> bool:
            return not processes_of(data_dir, pids.values())

        try:
            wait_until(all_gone, 15, "the supervisor's children to exit after it was killed")
        except AssertionError:
            left = processes_of(data_dir, pids.values())
            kill_all(left)
            raise AssertionError(
                "children outlived a SIGKILLed supervisor:\n" + "\n".join(map(str, left))
            ) from None
    finally:
        report = up.stop()
    # stop() after the fact found nothing left either (the supervisor died by signal).
    assert report.returncode == -signal.SIGKILL
    assert not report.survivors, report.survivors
    # The data dir is reusable right away: a fresh start works (and stops cleanly).
    with running_chorus(data_dir, free_port(), tmp_path) as again:
        assert "Admin API key" not in again.output
