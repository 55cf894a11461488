"""Fixtures for the tests of ``chorus cluster``'s layout (runtime/cluster.py).

PostgreSQL runs when ``CHORUS_TEST_POSTGRES_URL`` names a server (``.ci/run`` starts one);
each test gets a schema of its own for its events, and one for its read models.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import nats
import pytest
from chorus import busauth
from chorus.cluster import Cluster, ClusterLayout, Node
from chorus.contracts.feed import EventRecord
from chorus.contracts.servers import servers
from chorus.contracts.subjects import agent_inbox_prefix
from chorus.settings import Settings
from eventsourcing.persistence import PersistenceError
from nats.aio.client import Client as NATS

from tests.e2e.conftest import (
    bus_admits,
    open_body,
    read_store,
    request_until_answered,
    wait_until,
)
from tests.e2e.conftest import create_key as e2e_create_key
from tests.postgres import postgres_schema


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The event store's schema."""
    with postgres_schema("cluster") as url:
        yield url


@pytest.fixture
def postgres_read_url() -> Iterator[str]:
    """The read models' schema, beside the events' (the projector writes it, every
    gateway reads it)."""
    with postgres_schema("cluster_read") as url:
        yield url


@pytest.fixture
def rebuilt_url() -> Iterator[str]:
    """A schema to rebuild the read models into from the log, to compare with the live."""
    with postgres_schema("rebuilt") as url:
        yield url


@contextlib.contextmanager
def running_cluster(settings: Settings, layout: ClusterLayout) -> Iterator[Cluster]:
    running = Cluster(settings, layout)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def one_engine(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    """The layout with one engine and no gateway: whatever answers a command is that
    engine, and nothing else stands in for it."""
    settings = Settings(data_dir=tmp_path / "cluster", database_url=postgres_url)
    with running_cluster(settings, ClusterLayout(engines=1, gateways=0)) as running:
        yield running


async def bus_client(cluster: Cluster) -> NATS:
    """A connection to every node of the cluster that rides over a node's loss, as the
    gateway's service user (commands for any actor, reads of the EVENTS stream)."""
    urls, credentials = servers(cluster.service_nats_url("gateway"))
    return await nats.connect(
        urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2, **credentials
    )


def create_key(cluster: Cluster, actor: str, role: str = "agent") -> str:
    """A new API key from ``chorus keys create`` (as an operator makes one), once every
    node of the cluster lets it in as its actor's bus user."""
    key = e2e_create_key(cluster.data_dir, actor, role)
    if role in busauth.BUS_ROLES:
        wait_admitted(cluster, actor, key)
    return key


def wait_admitted(cluster: Cluster, actor: str, key: str) -> None:
    """Until every node of the cluster lets ``key`` in."""
    for node in cluster.nodes:
        admitted = partial(bus_admits, node.url, key.split("_")[1], key)
        wait_until(admitted, 30, f"{node.name} to admit {actor}")


async def agent_bus(cluster: Cluster, actor: str, key: str, **options: Any) -> NATS:
    """A connection as ``actor`` with its own key and reply inbox, to every node."""
    return await nats.connect(
        cluster.nats_url.split(","), user=key.split("_")[1], password=key,
        inbox_prefix=agent_inbox_prefix(actor), max_reconnect_attempts=-1,
        reconnect_time_wait=0.2, **options,
    )  # fmt: skip


async def open_session(nc: NATS, actor: str = "coordinator") -> dict[str, Any]:
    """Open a session over the bus, re-sent by command id until an engine answers."""
    body = open_body(uuid.uuid4().hex, str(uuid.uuid4()), ["participant"])
    reply = await request_until_answered(nc, f"chorus.cmd.{actor}.session.open", body)
    assert reply["status"] == "accepted", reply
    return reply


def store_records(database_url: str, attempts: int = 10) -> list[EventRecord]:
    """The store's records, read again when opening the store races another process
    opening it (each one's recorder creates its tables and functions on PostgreSQL, and
    two at once may fail with "tuple concurrently updated")."""
    for _ in range(attempts - 1):
        try:
            return read_store(database_url)
        except PersistenceError:
            time.sleep(0.2)
    return read_store(database_url)


def connections(node: Node) -> list[dict[str, Any]]:
    """The client connections a node serves (its monitoring port's ``/connz``)."""
    with urllib.request.urlopen(f"{node.monitor_url}/connz?auth=1", timeout=5) as response:  # noqa: S310
        found: list[dict[str, Any]] = json.loads(response.read()).get("connections") or []
        return found


def nodes_serving(cluster: Cluster, client_name: str) -> list[Node]:
    """The live nodes a client named ``client_name`` is connected to."""
    return [
        node
        for node in cluster.nodes
        if node.alive and any(c.get("name") == client_name for c in connections(node))
    ]
