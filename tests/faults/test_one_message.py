"""No single message stops Chorus: oversize, deeply nested, out-of-range and forged ones.

Each test sends what an attacker (or a buggy agent) would, on a real nats-server with a
real engine, relay and gateway, then proves two things: the message got a clear answer
with a stable code (and a dead letter), and everything after it still flows.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import websockets
from chorus.bootstrap import EngineService
from chorus.contracts.bounds import MAX_COMMAND_BYTES, MAX_JSON_DEPTH
from chorus.contracts.envelope import Envelope
from chorus.contracts.sessions import OpenSession, SubmitResult, Task
from chorus.engine.adapters.streams import DLQ_MAX_BYTES, DLQ_MAX_MESSAGE_BYTES
from chorus.engine.handlers import HANDLERS
from chorus.engine.processor import Command, Processor
from chorus.gateway.state import GatewayConfig
from chorus.natsd import start_nats_server
from chorus.store.recorder import open_recorder
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from tests.conftest import Gateway, NatsEndpoint, engine_config, serve_gateway
from tests.integration.test_bus import domain_records, open_payload, send, stream_records
from tests.integration.test_gateway_support import (
    SESSIONS,
    eventually,
    open_session,
    recv_events,
    submit,
)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


async def dead_letter(nc: NATS, code: str) -> Any:
    """The last dead letter of ``code``: the engine answers first and dead-letters right
    after, so a read at once may come before it is stored (bounded wait)."""
    for _ in range(250):
        try:
            return await nc.jetstream().get_last_msg("DLQ", f"chorus.dlq.{code}")
        except NotFoundError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"no dead letter chorus.dlq.{code}")


async def raw_request(nc: NATS, subject: str, body: bytes) -> dict[str, Any]:
    msg = await nc.request(subject, body, timeout=10)
    return dict(json.loads(msg.data))


# The bus ---------------------------------------------------------------------------------------


async def test_a_command_over_the_size_limit_is_rejected_with_the_limit(
    engine: EngineService, nc: NATS
) -> None:
    payload = open_payload(["a1"])
    sid = payload["session_id"]
    assert (await send(nc, "coord", "open", payload))["status"] == "accepted"
    big = {"session_id": sid, "result": {"blob": "x" * (MAX_COMMAND_BYTES + 10)}}
    reply = await send(nc, "a1", "submit_result", big, "too-big")
    assert reply["status"] == "rejected"
    assert reply["error"]["code"] == "command_too_large"
    assert reply["error"]["details"]["limit"] == MAX_COMMAND_BYTES
    letter = await dead_letter(nc, "command_too_large")
    assert int(letter.headers["Chorus-Truncated"]) > MAX_COMMAND_BYTES
    assert len(letter.data) <= 64 * 1024
    dlq = await nc.jetstream().stream_info("DLQ")  # and the dead letters cannot fill the disk
    assert dlq.config.max_bytes == DLQ_MAX_BYTES
    assert dlq.config.max_msg_size == DLQ_MAX_MESSAGE_BYTES
    # The same agent, a sane result: accepted.
    ok = await send(nc, "a1", "submit_result", {"session_id": sid, "result": {"n": 1}})
    assert ok["status"] == "accepted"


async def test_deep_json_on_the_bus_gets_a_reply_and_a_dead_letter(
    engine: EngineService, nc: NATS
) -> None:
    body = f'{{"command_id": "deep-1", "payload": {deep(10_000)}}}'.encode()
    for subject in ("chorus.cmd.a1.session.open", "chorus.cmd.a1.agent.heartbeat"):
        reply = await raw_request(nc, subject, body)
        assert reply["status"] == "rejected"
        assert reply["error"]["code"] == "nesting_too_deep"
        assert reply["error"]["details"] == {"max_depth": MAX_JSON_DEPTH}
    letter = await dead_letter(nc, "nesting_too_deep")
    assert letter.headers["Chorus-Subject"] == "chorus.cmd.a1.agent.heartbeat"
    # Just past the limit, inside a result that is otherwise fine: the same answer.
    payload = open_payload(["a1"])
    await send(nc, "coord", "open", payload)
    result = {"session_id": payload["session_id"], "result": {"x": json.loads(deep(40))}}
    reply = await send(nc, "a1", "submit_result", result)
    assert reply["error"]["code"] == "nesting_too_deep"
    assert (await send(nc, "coord", "open", open_payload(["a1"])))["status"] == "accepted"


async def test_out_of_range_integers_and_long_ids_are_rejected(
    engine: EngineService, nc: NATS
) -> None:
    payload = open_payload(["a1"])
    await send(nc, "coord", "open", payload)
    body = json.dumps(
        {
            "command_id": "big-int",
            "payload": {"session_id": payload["session_id"], "result": {"n": 2**64}},
        }
    ).encode()
    reply = await raw_request(nc, "chorus.cmd.a1.session.submit_result", body)
    assert reply["error"]["code"] == "number_out_of_range"
    for field in ("correlation_id", "causation_id"):
        envelope = {"command_id": f"long-{field}", field: "c" * 201, "payload": open_payload([])}
        reply = await raw_request(
            nc, "chorus.cmd.coord.session.open", json.dumps(envelope).encode()
        )
        assert reply["error"]["code"] == "invalid_command"
        assert reply["error"]["details"] == {"field": field}


# The relay -----------------------------------------------------------------------------------


async def test_a_forged_event_with_a_high_position_does_not_stop_the_relay(
    engine: EngineService, nc: NATS, database_url: str
) -> None:
    await send(nc, "coord", "open", open_payload(["a1"]))
    await stream_records(nc, 1)
    js = nc.jetstream()
    await js.publish("chorus.evt.session.x.Bogus", b"{}", headers={"Chorus-Position": "999999999"})
    # A forged message squatting the message id of the next real event.
    upcoming = open_payload(["a1"])
    await js.publish(
        "chorus.evt.session.y.Bogus",
        b"{}",
        headers={"Chorus-Position": "2", "Nats-Msg-Id": f"{upcoming['session_id']}:1"},
    )
    await send(nc, "coord", "open", upcoming)
    assert engine.relay is not None
    await engine.relay.resync()  # as after a restart: it must look past both
    await send(nc, "coord", "open", open_payload(["a1"]))
    stored = domain_records(database_url)
    published = [r for r in await stream_records(nc, len(stored) + 2) if "position" in r]
    assert [r["position"] for r in published] == [r.position for r in stored]


@pytest.fixture
def small_payload_nats(tmp_path: Path) -> Iterator[NatsEndpoint]:
    """A nats-server whose payload limit (16 KiB) is far below the command limit, so an
    event can be recorded that is too large to publish."""
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 16384\n")
    server = start_nats_server(tmp_path / "nats-small", monitor=False, config=config)
    try:
        yield NatsEndpoint(server.url, "binary")
    finally:
        server.stop()


def _command(actor: str, name: str, payload: Any) -> Command:
    envelope = Envelope(command_id=uuid.uuid4().hex, payload=payload)
    return Command(actor=actor, handler=HANDLERS[("session", name)], envelope=envelope)


async def test_an_event_too_large_to_publish_goes_out_as_a_reference_the_feed_resolves(
    small_payload_nats: NatsEndpoint, database_url: str, read_store_url: str, tmp_path: Path
) -> None:
    sid = str(uuid.uuid4())
    processor = Processor(open_recorder(database_url))
    processor.handle_batch(
        [
            _command(
                "coord",
                "open",
                OpenSession(session_id=sid, participants=["a1"], task=Task(description="big")),
            )
        ]
    )
    blob = "y" * 40_000
    processor.handle_batch(
        [_command("a1", "submit_result", SubmitResult(session_id=sid, result={"blob": blob}))]
    )
    nc = await nats.connect(small_payload_nats.url)
    try:
        engine = EngineService(
            engine_config(
                nats_url=small_payload_nats.url,
                database_url=database_url,
                timers=False,
                delegation=False,
                liveness=False,
            )
        )
        async with engine:
            published = await stream_records(nc, 3)
        assert [r["type"] for r in published] == [
            "SessionOpened",
            "ResultSubmitted",
            "SessionFinalised",
        ]
        assert published[1]["data"] == {}  # the reference
        config = GatewayConfig(
            nats_url=small_payload_nats.url,
            database_url=database_url,
            read_store_url=read_store_url,
            keys_path=str(tmp_path / "k.db"),
        )
        with serve_gateway(config) as gateway:
            headers = gateway.key("auditor-1", "auditor")
            async with websockets.connect(
                f"{gateway.ws_url}{SESSIONS}/{sid}/feed", additional_headers=headers
            ) as ws:
                events = await recv_events(ws, 3)
        assert events[1]["data"]["result"] == {"blob": blob}
        assert events[2]["type"] == "SessionFinalised"
    finally:
        await nc.close()


# Over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def roomy_gateway(
    nats_server: NatsEndpoint, database_url: str, read_store_url: str, tmp_path: Path
) -> Iterator[Gateway]:
    """A gateway with the production body limit (1 MiB) and a relay stall limit of 0 s."""
    config = GatewayConfig(
        nats_url=nats_server.url,
        database_url=database_url,
        read_store_url=read_store_url,
        keys_path=str(tmp_path / "keys.db"),
        relay_stall_seconds=0.0,
    )
    with serve_gateway(config) as gateway:
        yield gateway


@pytest.fixture
async def http(
    engine: Any, projector: Any, roomy_gateway: Gateway
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=roomy_gateway.url, timeout=20) as client:
        yield client


async def test_a_result_of_a_mebibyte_over_http_is_413_and_the_feed_goes_on(
    http: httpx.AsyncClient, roomy_gateway: Gateway
) -> None:
    owner, agent = roomy_gateway.key("owner"), roomy_gateway.key("a1")
    session_id = await open_session(http, owner, ["a1"])
    response = await submit(http, agent, session_id, {"blob": "z" * (1024 * 1024 - 200)})
    assert response.status_code == 413, response.text
    problem = response.json()
    assert problem["code"] == "command_too_large"
    assert problem["details"]["limit"] == MAX_COMMAND_BYTES
    assert (await submit(http, agent, session_id)).status_code == 200
    ready = await http.get("/ready")
    assert ready.json()["checks"]["relay"]["stalled"] is False


async def test_deep_json_over_http_is_a_400_not_a_500(
    http: httpx.AsyncClient, roomy_gateway: Gateway
) -> None:
    owner = roomy_gateway.key("owner")
    for body in (f'{{"task": {deep(10_000)}}}', f'{{"task": {deep(500)}}}'):
        response = await http.post(
            SESSIONS, content=body, headers={**owner, "content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["code"] in ("nesting_too_deep", "validation_error")
    session_id = await open_session(http, owner, ["a1"])
    response = await submit(http, roomy_gateway.key("a1"), session_id, {"x": json.loads(deep(40))})
    assert response.status_code == 400
    assert response.json()["code"] == "nesting_too_deep"


async def test_ready_reports_a_stalled_relay(
    nats_server: NatsEndpoint, database_url: str, roomy_gateway: Gateway, nc: NATS
) -> None:
    config = engine_config(nats_url=nats_server.url, database_url=database_url, relay=False)
    async with httpx.AsyncClient(base_url=roomy_gateway.url, timeout=20) as http:
        async with EngineService(config):
            await send(nc, "coord", "open", open_payload(["a1"]))
            response = await http.get("/ready")
            assert response.status_code == 503, response.text
            relay = response.json()["checks"]["relay"]
            assert relay["stalled"] is True
            assert relay["oldest_unpublished"] is not None
        async with EngineService(
            engine_config(nats_url=nats_server.url, database_url=database_url)
        ):

            async def ready() -> bool:
                return (await http.get("/ready")).status_code == 200

            await eventually(ready, what="/ready after the relay caught up")


async def test_a_forged_event_on_a_sessions_subject_does_not_stop_its_feed(
    http: httpx.AsyncClient, roomy_gateway: Gateway, nc: NATS
) -> None:
    owner, agent = roomy_gateway.key("owner"), roomy_gateway.key("a1")
    session_id = await open_session(http, owner, ["a1", "a2"])
    async with websockets.connect(
        f"{roomy_gateway.ws_url}{SESSIONS}/{session_id}/feed", additional_headers=owner
    ) as ws:
        assert [e["type"] for e in await recv_events(ws, 1)] == ["SessionOpened"]
        js = nc.jetstream()
        subject = f"chorus.evt.session.{session_id}.Bogus"
        for position in ("999999999", "not-a-number"):
            await js.publish(subject, b"{}", headers={"Chorus-Position": position})
        assert (await submit(http, agent, session_id)).status_code == 200
        assert [e["type"] for e in await recv_events(ws, 1)] == ["ResultSubmitted"]
