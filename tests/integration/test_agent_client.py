"""The SDK's command side at the edge: retries with one command id, and liveness.

Each test runs on FastStream's in-memory ``TestNatsBroker`` and, with ``with_real=True``,
on a real nats-server: "no engine answered" looks different on each (``SubscriberNotFound``
in memory, "no responders" on the wire), and the client must treat both alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest
from chorus.agent_sdk import UNANSWERED, AgentClient
from faststream.nats import NatsBroker, TestNatsBroker

from ..conftest import NatsEndpoint
from .fake_engine import AGENT, WAIT, FakeEngine


@dataclass
class Edge:
    broker: NatsBroker
    engine: FakeEngine
    real: NatsEndpoint | None

    async def engine_up(self) -> None:
        """Start the scripted engine (as a restarted engine would come back)."""
        commands = self.broker.subscriber("chorus.cmd.>", persistent=False)
        commands(self.engine.on_command)
        await commands.start()


@pytest.fixture(params=["memory", "real"])
async def edge(request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    real = request.param == "real"
    endpoint: NatsEndpoint | None = request.getfixturevalue("nats_server") if real else None
    broker = NatsBroker(endpoint.url if endpoint else "nats://127.0.0.1:1", log_level=logging.DEBUG)
    async with TestNatsBroker(broker, with_real=real) as br:
        yield Edge(br, FakeEngine(), endpoint)


async def test_a_command_is_resent_with_its_id_until_an_engine_answers(edge: Edge) -> None:
    client = AgentClient(edge.broker, AGENT, request_timeout=2, give_up_after=WAIT)
    sending = asyncio.create_task(
        client.send("task", "accept", {"task_id": "t-1"}, command_id="cmd-1")
    )
    await asyncio.sleep(0)  # the first attempt finds no engine
    await edge.engine_up()
    reply = await asyncio.wait_for(sending, WAIT)
    assert (reply.command_id, reply.status) == ("cmd-1", "accepted")
    assert [(c.command, c.command_id) for c in edge.engine.commands] == [("accept", "cmd-1")]


async def test_with_no_engine_the_client_gives_up_with_the_bus_error(edge: Edge) -> None:
    client = AgentClient(edge.broker, AGENT, request_timeout=2, give_up_after=0)
    with pytest.raises(UNANSWERED):
        await client.accept("t-1")


async def test_a_rejection_is_a_reply_not_a_retry(edge: Edge) -> None:
    await edge.engine_up()
    edge.engine.reject["submit_result"] = "not_a_participant"
    client = AgentClient(edge.broker, AGENT, request_timeout=2)
    reply = await client.submit_result("s-1", {"verdict": "lgtm"}, output_hash="sha256:ab")
    assert reply.status == "rejected" and reply.error is not None
    assert reply.error.code == "not_a_participant"
    [sent] = edge.engine.commands
    assert sent.payload == {"session_id": "s-1", "result": {"verdict": "lgtm"},
                            "success": True, "output_hash": "sha256:ab"}  # fmt: skip


async def test_an_open_client_heartbeats_and_answers_pings(edge: Edge) -> None:
    await edge.engine_up()
    async with AgentClient(edge.broker, AGENT, heartbeat_interval=0.05):
        await edge.engine.until(lambda: edge.engine.beats >= 2)
        reply = await edge.broker.request(b"", f"chorus.agent.{AGENT}.ping", timeout=WAIT)
        assert json.loads(reply.body) == {"agent_id": AGENT}


async def test_a_plain_nats_client_heartbeats_and_answers_pings_too(
    nats_server: NatsEndpoint,
) -> None:
    broker = NatsBroker(nats_server.url, log_level=logging.DEBUG)
    async with TestNatsBroker(broker, with_real=True) as br:
        edge = Edge(br, FakeEngine(), nats_server)
        await edge.engine_up()
        nc = await nats.connect(nats_server.url)
        try:
            async with AgentClient(nc, AGENT, heartbeat_interval=0.05) as client:
                await edge.engine.until(lambda: edge.engine.beats >= 2)
                reply = await nc.request(f"chorus.agent.{AGENT}.ping", b"", timeout=WAIT)
                assert json.loads(reply.data) == {"agent_id": AGENT}
                assert (await client.accept("t-2")).status == "accepted"
        finally:
            await nc.close()
