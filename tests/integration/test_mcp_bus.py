"""Tool calls over the bus (``chorus.cmd.<actor>.tool.call``) are the gateways' to answer:
the engine, which takes every other command subject, leaves them alone, so a slow or
hanging tool server can never sit in its command path. (On compose's cluster the gateway's
user takes and answers them and an agent calls as itself only: test_nats_conf.py.)"""

from __future__ import annotations

import json
import uuid

from chorus.bootstrap import EngineService
from chorus.contracts.subjects import TOOL_CALLS, TOOL_QUEUE
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg


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
