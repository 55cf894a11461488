"""Stores that stop keeping up: a projector that is down, a disk that is full.

The promise in both cases: the answer says what happened with a stable code (503
``read_model_behind`` / ``store_unavailable``), nothing acknowledged is lost, ``/ready``
tells, and everything recovers by itself once the fault is gone.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from chorus.bootstrap import EngineService
from chorus.gateway.state import GatewayConfig
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder

from tests.conftest import Gateway, NatsEndpoint, engine_config, serve_gateway
from tests.integration.test_gateway_support import SESSIONS, eventually, open_body


async def test_projector_down_a_post_answers_503_read_model_behind(
    engine: EngineService, nats_server: NatsEndpoint, database_url: str, read_store_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    config = GatewayConfig(
        nats_url=nats_server.url, database_url=database_url, read_store_url=read_store_url,
        keys_path=str(tmp_path / "keys.db"), read_your_writes_timeout=0.2,
    )  # fmt: skip
    with serve_gateway(config) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
            session_id = str(uuid.uuid4())
            body = open_body(["a1"], session_id=session_id)
            response = await http.post(SESSIONS, json=body, headers=gateway.key("owner"))
            assert response.status_code == 503, response.text
            problem = response.json()
            assert problem["code"] == "read_model_behind"
            assert problem["details"]["session_id"] == session_id
            assert response.headers["retry-after"] == "1"


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (root only: CI and the dev machines run as root)."""
    path.mkdir(parents=True, exist_ok=True)
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount command here")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run([umount, "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write until the filesystem is full; returns the file to delete to free it."""
    filler = disk / "filler"
    with filler.open("wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * (256 * 1024))
            handle.flush()
    return filler


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with small_filesystem(tmp_path / "disk") as disk:
        yield disk


@pytest.fixture
async def stack(
    full_disk: Path, nats_server: NatsEndpoint, read_store_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, str]]:
    """Engine and gateway on an event store that lives on the small filesystem (no
    projector: POSTs are judged by their engine outcome, so 503 ``read_model_behind``
    means recorded)."""
    database_url = f"sqlite:///{full_disk}/events.db"
    config = engine_config(nats_url=nats_server.url, database_url=database_url)
    async with EngineService(config):
        gateway_config = GatewayConfig(
            nats_url=nats_server.url, database_url=database_url, read_store_url=read_store_url,
            keys_path=str(tmp_path / "keys.db"), read_your_writes_timeout=0.05,
        )  # fmt: skip
        with serve_gateway(gateway_config) as gateway:
            yield gateway, database_url


async def test_a_full_disk_is_503_store_unavailable_reported_in_ready_and_recovers(
    stack: tuple[Gateway, str], full_disk: Path
) -> None:
    gateway, database_url = stack
    owner = gateway.key("owner")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        assert (await http.get("/ready")).json()["checks"]["event_store"] is True
        filler = fill(full_disk)
        # A commit that fits in the WAL file as it is needs no new space (the engine's
        # checkpoints start the WAL over every 0.1 s), so the first POSTs may still be
        # recorded, durably; soon one needs space and is refused.
        recorded_before: list[str] = []
        for attempt in range(500):
            body = open_body(["a1"], session_id=str(uuid.uuid4()))
            key = {**owner, "Idempotency-Key": f"k-full-{attempt}"}
            response = await http.post(SESSIONS, json=body, headers=key)
            assert response.status_code == 503, response.text
            if response.json()["code"] == "store_unavailable":
                break
            assert response.json()["code"] == "read_model_behind"  # recorded
            recorded_before.append(body["session_id"])
        else:
            raise AssertionError("the full disk never refused a write")
        history = await http.get(
            f"{SESSIONS}/{body['session_id']}/events", headers=gateway.key("aud", "auditor")
        )
        assert history.status_code in (404, 503), history.text  # never a 500
        ready = await http.get("/ready")
        assert ready.status_code == 503
        assert "No space left" in ready.json()["checks"]["event_store_error"]
        filler.unlink()

        async def recorded() -> bool:
            again = await http.post(SESSIONS, json=body, headers=key)
            # Recorded now; the read model (not on this disk) may lag: 201 or 503 behind.
            return again.status_code == 201 or again.json().get("code") == "read_model_behind"

        await eventually(recorded, what="the POST to be recorded once space returned")
        assert (await http.get("/ready")).json()["checks"]["event_store"] is True
    # Nothing acknowledged was lost: each POST answered as recorded is in the store once.
    recorder = open_recorder(database_url)
    try:
        for session_id in [*recorded_before, body["session_id"]]:
            events = recorder.select_events(uuid.UUID(session_id))
            assert [e.originator_version for e in events] == [1], session_id
    finally:
        close_recorder(recorder)
