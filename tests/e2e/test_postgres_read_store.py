"""``chorus up`` with its read models in PostgreSQL (``CHORUS_READ_STORE_URL``), and a second
gateway process on the same read store: what one gateway's caller wrote, the other serves.
Then ``chorus project --rebuild`` swaps a rebuilt copy in, row for row the same.

Runs when ``CHORUS_TEST_POSTGRES_URL`` names a server (``.ci/run`` starts one); the read
store is a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chorus import busauth
from chorus.natsd import die_with_parent
from chorus.projections.sessions import SessionsProjection

from tests.conftest import ReadStores

from .conftest import (
    async_wait_until,
    clean_env,
    cli,
    create_key,
    free_port,
    running_chorus,
    sqlite_url,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def postgres_stores(tmp_path: Path) -> Iterator[ReadStores]:
    url = os.environ.get("CHORUS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("CHORUS_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    stores = ReadStores("postgres", tmp_path, url)
    try:
        yield stores
    finally:
        stores.cleanup()


async def open_session(http: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    payload = {"session_id": session_id, "participants": ["agent-1", "agent-2"],
               "task": {"description": "shared read store"}}  # fmt: skip

    async def attempt() -> dict[str, Any] | None:
        try:
            response = await http.post(
                "/api/v1/sessions", json=payload, headers={"Idempotency-Key": f"open-{session_id}"}
            )
        except httpx.ConnectError:  # the second gateway is still starting
            return None
        if response.status_code == 503:  # the engine may still be subscribing
            return None
        assert response.status_code == 201, response.text
        return dict(response.json())

    return await async_wait_until(attempt, 60, f"session {session_id} to open", interval=0.2)


async def listed(http: httpx.AsyncClient) -> list[str] | None:
    response = await http.get("/api/v1/sessions", params={"limit": 100})
    if response.status_code != 200:  # a gateway still starting
        return None
    return sorted(item["session_id"] for item in response.json()["items"])


def test_two_gateways_serve_one_postgresql_read_store(
    tmp_path: Path, postgres_stores: ReadStores
) -> None:
    read_url = postgres_stores.url("read")
    data_dir = tmp_path / "data"
    sessions = sorted(str(uuid.uuid4()) for _ in range(2))
    with running_chorus(data_dir, free_port(), tmp_path, CHORUS_READ_STORE_URL=read_url) as up:
        assert up.nats_url
        key = create_key(data_dir, "operator-1", "operator")
        port = free_port()
        log = (tmp_path / "second-gateway.log").open("wb")
        second = subprocess.Popen(
            cli("gateway"),
            cwd=tmp_path,
            env=clean_env(
                CHORUS_DATA_DIR=str(data_dir),
                CHORUS_NATS_URL=busauth.service_url(up.nats_url, "gateway", data_dir / "nats"),
                CHORUS_READ_STORE_URL=read_url,
                CHORUS_PORT=str(port),
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        try:

            async def drive() -> None:
                headers = {"Authorization": f"Bearer {key}"}
                async with (
                    httpx.AsyncClient(base_url=up.base_url, headers=headers, timeout=30,
                                      trust_env=False) as first_http,
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers,
                                      timeout=30, trust_env=False) as second_http,
                ):  # fmt: skip
                    await open_session(first_http, sessions[0])
                    await open_session(second_http, sessions[1])
                    for http in (first_http, second_http):

                        async def both(http: httpx.AsyncClient = http) -> bool:
                            return await listed(http) == sessions

                        await async_wait_until(both, 60, "both sessions on both gateways", 0.1)

            asyncio.run(drive())
        finally:
            second.terminate()
            second.wait(timeout=30)
            log.close()
    assert not (data_dir / "read.db").exists()  # nothing went to the default SQLite store

    tables = SessionsProjection().tables
    live = postgres_stores.rows(read_url, tables)
    assert sorted(row[1] for row in live["sessions"]) == sessions
    done = subprocess.run(
        cli("project", "--rebuild", "sessions"),
        cwd=tmp_path,
        env=clean_env(
            CHORUS_DATA_DIR=str(data_dir),
            CHORUS_DATABASE_URL=sqlite_url(data_dir / "events.db"),
            CHORUS_READ_STORE_URL=read_url,
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt sessions" in done.stdout
    assert postgres_stores.rows(read_url, tables) == live
