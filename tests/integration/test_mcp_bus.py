"""Tool calls over the bus (``chorus.cmd.<actor>.tool.call``) are the gateways' to answer:
the engine, which takes every other command subject, leaves them alone, so a slow or
hanging tool server can never sit in its command path; the cluster's bus model lets the
gateway take and answer them, and an agent call as itself only."""

from __future__ import annotations

import json
import uuid

from chorus.bootstrap import EngineService
from chorus.contracts.subjects import TOOL_CALLS, TOOL_QUEUE
from chorus.natsd import NatsServer
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.integration.test_bus_identity import Client
from tests.integration.test_nats_conf import cluster_auth  # noqa: F401 (fixture)


async def test_the_engine_leaves_tool_calls_to_the_gateways(
    engine: EngineService, nc: NATS
) -> None:
    async def gateway(msg: Msg) -> None:
        await msg.respond(b'{"answered_by": "gateway"}')

    await nc.subscribe(TOOL_CALLS, queue=TOOL_QUEUE, cb=gateway)
    await nc.flush()
    body = json.dumps({"command_id": uuid.uuid4().hex, "payload": {"server": "calc",
                                                                   "tool": "add"}}).encode()  # fmt: skip
    answers = [
        json.loads((await nc.request("chorus.cmd.agent-1.tool.call", body, timeout=10)).data)
        for _ in range(20)
    ]
    assert answers == [{"answered_by": "gateway"}] * 20
    # Any other command on the tool "aggregate" is still the engine's: refused as unknown.
    other = json.loads((await nc.request("chorus.cmd.agent-1.tool.list", body, timeout=10)).data)
    assert other["error"]["code"] == "unknown_command"


async def test_on_the_clusters_bus_only_the_gateway_answers_tool_calls_and_agents_call_as_themselves(
    cluster_auth: NatsServer,  # noqa: F811 (the fixture imported above)
) -> None:
    gateway, agent = Client(), Client()
    gnc = await gateway.connect_as(cluster_auth.url, "chorus-gateway", "gateway-secret", None)
    anc = await agent.connect_as(cluster_auth.url, "agent-1", "agent-1-secret", "agent-1")

    async def answer(msg: Msg) -> None:
        await msg.respond(msg.subject.encode())

    await gnc.subscribe(TOOL_CALLS, queue=TOOL_QUEUE, cb=answer)
    await gnc.flush()
    reply = await anc.request("chorus.cmd.agent-1.tool.call", b"{}", timeout=10)
    assert reply.data == b"chorus.cmd.agent-1.tool.call"  # the gateway could answer it
    assert not gateway.violation.is_set() and not agent.violation.is_set()
    # An agent can neither take tool calls (to answer them itself) nor call as another.
    await anc.subscribe(TOOL_CALLS, queue=TOOL_QUEUE)
    assert "chorus.cmd.*.tool.call" in await agent.refused()
    await anc.publish("chorus.cmd.agent-2.tool.call", b"{}")
    assert "chorus.cmd.agent-2.tool.call" in await agent.refused()
    await anc.close()
    await gnc.close()
