"""Faults of the embedded deployment, as an operator meets them: a killed nats-server, a
second ``chorus up`` on the same data dir, a gateway port already taken, commands run from
the wrong directory. Each runs ``chorus up`` (or ``chorus``) as real processes on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import (
    ChorusUp,
    clean_env,
    cli,
    create_key,
    free_port,
    role_of,
    running_chorus,
    wait_until,
)
from .test_chorus_up import get_view, open_session

pytestmark = [pytest.mark.e2e, pytest.mark.kill]


def nats_child(up: ChorusUp) -> int | None:
    assert up.process is not None
    from .conftest import children_of

    found = [c.pid for c in children_of(up.process.pid) if role_of(c) == "nats-server"]
    return found[0] if found else None


async def test_a_killed_nats_server_is_restarted_on_its_port_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    with running_chorus(tmp_path / "data", free_port(), tmp_path) as up:
        headers = {"Authorization": f"Bearer {up.admin_key}"}
        async with httpx.AsyncClient(base_url=up.base_url, headers=headers, timeout=30) as http:
            before = str(uuid.uuid4())
            await open_session(http, before, ["agent-1"])
            first = nats_child(up)
            assert first is not None
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: (p := nats_child(up)) is not None and p != first, 60,
                       "a new nats-server")  # fmt: skip
            after = str(uuid.uuid4())
            await open_session(http, after, ["agent-1"])  # engine and gateway reconnected
            assert (await get_view(http, before)) is not None
            assert (await get_view(http, after)) is not None
        port = (tmp_path / "data" / "nats" / "port").read_text().strip()
        assert up.nats_url is not None and up.nats_url.endswith(f":{port}")
    assert "nats-server exited with -9; restarting on port" in up.output


def test_a_second_chorus_up_on_a_data_dir_in_use_refuses_with_the_pid(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_chorus(data_dir, free_port(), tmp_path) as up:
        assert up.process is not None
        second = subprocess.run(
            cli("up", "--data-dir", str(data_dir), "--port", str(free_port())),
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert second.returncode != 0
        assert f"in use by another chorus up (pid {up.process.pid})" in second.stderr


def test_a_gateway_port_in_use_fails_fast_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            cli("up", "--data-dir", str(tmp_path / "data"), "--port", str(port)),
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    assert done.returncode != 0
    assert f"cannot serve the API on 127.0.0.1:{port}" in done.stderr
    assert "Chorus is up" not in done.stdout


def test_keys_and_rebuild_refuse_a_data_dir_without_a_store(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def chorus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli(*args), cwd=elsewhere, env=clean_env(), capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    for args in (("keys", "create", "--actor", "x", "--role", "admin"), ("project", "--rebuild")):
        done = chorus(*args)
        assert done.returncode == 2, done
        assert f"data dir {elsewhere / '.chorus'}" in done.stderr
        assert "holds no Chorus store" in done.stderr
        assert not (elsewhere / ".chorus" / "keys.db").exists()
    created = chorus("keys", "create", "--actor", "x", "--role", "admin", "--init")
    assert created.returncode == 0, created
    assert created.stdout.strip().startswith("chk_")
    # A data dir that has a store: no --init needed.
    assert create_key(elsewhere / ".chorus", "y", "agent").startswith("chk_")


async def test_sigkill_of_nats_under_no_load_leaves_the_lock_to_a_new_chorus_up(
    tmp_path: Path,
) -> None:
    """The lock dies with its holder: after ``chorus up`` is killed, the next one starts."""
    data_dir = tmp_path / "data"
    up = ChorusUp(data_dir, free_port(), tmp_path)
    try:
        up.start()
        assert up.process is not None
        up.process.send_signal(signal.SIGKILL)
        up.process.wait(15)
    finally:
        up.stop()
    await asyncio.sleep(0)
    with running_chorus(data_dir, free_port(), tmp_path):
        pass
