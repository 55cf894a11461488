"""The cluster's bus is ``chorus up``'s: an agent key made with ``chorus keys create`` is a
NATS user on every node, pinned to its own subjects, and nothing gets in without a
credential, through a client port or a route port.

Each node also answers ``/healthz`` on its monitoring port (compose.yaml's health check).
The attacks are the reviewer's, with an ordinary agent key, on a node other than the one
the engine uses: act as another agent, read the EVENTS stream's API or everyone's events.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
import uuid
from functools import partial

import pytest
from chorus.cluster import Cluster, Node

from tests.cluster.conftest import create_key
from tests.e2e.conftest import bus_admits, open_body, request_until_answered, wait_until
from tests.integration.test_bus_identity import Client

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def route_refuses_a_stranger(node: Node) -> bool:
    """A raw CONNECT without the routes' secret on ``node``'s route port is refused."""
    with socket.create_connection(("127.0.0.1", node.route_port), timeout=5) as conn:
        reader = conn.makefile("rb")
        reader.readline()  # INFO
        options = {"verbose": False, "name": "stranger", "cluster": "chorus"}
        conn.sendall(f"CONNECT {json.dumps(options)}\r\nPING\r\n".encode())
        return b"Authorization Violation" in reader.readline()


def healthz_ok(node: Node) -> bool:
    try:
        with urllib.request.urlopen(f"{node.monitor_url}/healthz", timeout=5) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


async def attack(cluster: Cluster, key: str) -> None:
    for node in cluster.nodes:
        client = Client()
        nc = await client.connect(node.url, key, "agent-1")
        # As itself: the engine answers, through whichever node it is on.
        body = open_body(uuid.uuid4().hex, str(uuid.uuid4()), ["agent-2"])
        reply = await request_until_answered(nc, "chorus.cmd.agent-1.session.open", body)
        assert reply["status"] == "accepted", reply
        # As another agent, or on the JetStream API of the EVENTS stream: refused.
        for subject in ("chorus.cmd.agent-2.session.open", "$JS.API.STREAM.INFO.EVENTS",
                        "$JS.API.CONSUMER.CREATE.EVENTS", "$JS.API.STREAM.MSG.GET.EVENTS"):  # fmt: skip
            await nc.publish(subject, b"{}")
            assert subject.lower() in await client.refused()
        # Nor can it read everyone's events, commands or replies.
        for subject in ("chorus.evt.>", "chorus.cmd.>", "_INBOX.>"):
            await nc.subscribe(subject)
            assert subject.lower() in await client.refused()
        await nc.close()


def test_an_agent_key_is_a_user_on_every_node_with_its_own_subjects_only(
    one_engine: Cluster,
) -> None:
    cluster = one_engine
    create_key(cluster, "agent-2")
    key = create_key(cluster, "agent-1")  # every node admits it (create_key waits)
    asyncio.run(attack(cluster, key))
    for node in cluster.nodes:
        # What compose.yaml's health check asks, on a node of a secured cluster.
        wait_until(partial(healthz_ok, node), 30, f"{node.name}'s /healthz")
        assert not bus_admits(node.url, "agent-1", "agent-1")  # a guessed password
        assert not bus_admits(node.url, "", "")  # no credential at all
        assert route_refuses_a_stranger(node)
