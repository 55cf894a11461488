"""The bus with one NATS user per API key (as ``chorus up`` runs it): the reviewer's attacks
with an ordinary agent key, each now refused by the server's subject permissions.

A real nats-server runs with the config ``chorus.busauth`` writes from a real key store;
the engine connects as its service user. Agent-1 holds an agent key and tries what the
shared token used to allow: act as agent-2, read every command and reply, join the
engine's queue group or answer commands itself, publish events and dead letters.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from chorus import busauth
from chorus.bootstrap import EngineService, key_store_roles
from chorus.contracts.subjects import agent_inbox_prefix
from chorus.gateway.keys import KeyStore
from chorus.natsd import NatsServer, start_nats_server
from nats.aio.client import Client as NATS

from tests.conftest import engine_config


@dataclass
class Bus:
    server: NatsServer
    nats_dir: Path
    keys_path: Path
    keys: dict[str, str] = field(default_factory=dict)  # actor -> API key

    @property
    def url(self) -> str:
        return self.server.url

    async def key(self, actor: str, role: str = "agent") -> str:
        """A new key, once the reloaded server lets it in."""
        key = KeyStore(self.keys_path).create(actor, role)
        busauth.sync(self.nats_dir, self.keys_path)
        for _ in range(500):
            if "PONG" in await handshake(self.url, key.split("_")[1], key):
                break
            await asyncio.sleep(0.02)
        self.keys[actor] = key
        return key


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    nats_dir, keys_path = tmp_path / "nats", tmp_path / "keys.db"
    KeyStore(keys_path)
    config = busauth.write_config(nats_dir, keys_path)
    server = start_nats_server(nats_dir, config=config, monitor=False)
    try:
        yield Bus(server, nats_dir, keys_path)
    finally:
        server.stop()


@pytest.fixture
async def engine(bus: Bus, tmp_path: Path) -> AsyncIterator[EngineService]:
    url = busauth.service_url(bus.url, "engine", bus.nats_dir)
    config = engine_config(nats_url=url, database_url=f"sqlite:///{tmp_path}/events.db",
                          roles=key_store_roles(bus.keys_path))  # fmt: skip
    async with EngineService(config) as service:
        yield service


class Client:
    """A connection with a key, collecting the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.violation = asyncio.Event()
        self.closed = asyncio.Event()
        self.nc: NATS | None = None

    async def connect(self, url: str, key: str, actor: str) -> NATS:
        return await self.connect_as(url, key.split("_")[1], key, actor)

    async def connect_as(self, url: str, user: str, password: str, actor: str | None) -> NATS:
        """As ``actor`` (its own reply inbox), or as a service (``None``: ``_INBOX``)."""

        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))
            if "permissions violation" in str(error).lower():
                self.violation.set()

        async def on_closed() -> None:
            self.closed.set()

        self.nc = await nats.connect(
            url, user=user, password=password,
            inbox_prefix=agent_inbox_prefix(actor) if actor else "_INBOX",
            error_cb=on_error, closed_cb=on_closed, max_reconnect_attempts=1,
            reconnect_time_wait=0.1, allow_reconnect=True,
        )  # fmt: skip
        return self.nc

    async def refused(self) -> str:
        """Wait for the server's permission error and return it."""
        await asyncio.wait_for(self.violation.wait(), 10)
        self.violation.clear()
        return self.errors[-1]


def command(payload: dict[str, Any]) -> bytes:
    return json.dumps({"command_id": uuid.uuid4().hex, "payload": payload}).encode()


async def test_an_agent_commands_as_itself_and_nothing_else(bus: Bus, engine: EngineService):
    key = await bus.key("agent-1")
    await bus.key("agent-2")
    client = Client()
    nc = await client.connect(bus.url, key, "agent-1")
    reply = await nc.request("chorus.cmd.agent-1.agent.register",
                             command({"name": "agent-1"}), timeout=10)  # fmt: skip
    assert json.loads(reply.data)["status"] == "accepted"

    # As agent-2: the server drops it and says why.
    await nc.publish("chorus.cmd.agent-2.agent.register", command({"name": "agent-2"}))
    assert "chorus.cmd.agent-2.agent.register" in await client.refused()
    for subject in ("chorus.evt.session.x.SessionFinalised", "chorus.dlq.forged",
                    "_INBOX.abc.def", "$JS.API.STREAM.DELETE.EVENTS"):  # fmt: skip
        await nc.publish(subject, b"{}")
        assert subject.lower() in await client.refused()
    await nc.close()


@pytest.mark.parametrize(
    ("subject", "queue"),
    [
        ("chorus.cmd.>", ""),  # read every command
        ("chorus.cmd.*.session.submit_result", ""),  # answer commands itself
        ("chorus.cmd.>", "chorus-engine"),  # join the engine's queue group
        ("_INBOX.>", ""),  # read every reply
        ("_INBOX_agent-2.>", ""),  # read another agent's replies
        ("chorus.evt.>", ""),
        ("chorus.task.agent-2", ""),
        ("chorus.agent.agent-2.ping", ""),
        ("chorus.part.>", ""),  # take commands passed on to a partition's owner
        ("chorus.part.0", "chorus-partition"),
    ],
)
async def test_an_agent_cannot_listen_where_it_does_not_belong(
    bus: Bus, subject: str, queue: str
) -> None:
    client = Client()
    nc = await client.connect(bus.url, await bus.key("agent-1"), "agent-1")
    await nc.subscribe(subject, queue=queue)
    assert subject.lower() in await client.refused()
    await nc.close()


async def test_no_key_can_pass_a_forged_command_to_a_partitions_owner(
    bus: Bus, engine: EngineService
) -> None:
    """The partition subjects carry commands that one engine checked and passes to another,
    which trusts their actor: an agent key (or the gateway's user) publishing there, say a
    session's time-out as the engine itself, is refused by the server; so is a write of the
    partition table."""
    key = await bus.key("agent-1")
    client = Client()
    nc = await client.connect(bus.url, key, "agent-1")
    sid = str(uuid.uuid4())
    reply = await nc.request("chorus.cmd.agent-1.session.open", command({
        "session_id": sid, "participants": ["agent-1", "agent-2"],
        "task": {"description": "x"}, "timeout_seconds": 3600}), timeout=10)  # fmt: skip
    assert json.loads(reply.data)["status"] == "accepted"
    forged = {"Chorus-Command-Subject": "chorus.cmd.system.session.timeout"}
    for partition in range(32):
        await nc.publish(f"chorus.part.{partition}", command({"session_id": sid}), headers=forged)
        assert f"chorus.part.{partition}" in await client.refused()
    await nc.publish("$KV.chorus_partitions.table", b"{}")
    assert "$kv.chorus_partitions.table" in await client.refused()
    await nc.close()

    gateway_client = Client()
    gateway = await gateway_client.connect_as(
        bus.url, "chorus-gateway", busauth.service_passwords(bus.nats_dir)["gateway"], None
    )
    await gateway.publish("chorus.part.0", command({"session_id": sid}), headers=forged)
    assert "chorus.part.0" in await gateway_client.refused()
    await gateway.close()
    # The engine recorded no time-out: the session takes results as before.
    submitter = Client()
    nc = await submitter.connect(bus.url, key, "agent-1")
    reply = await nc.request("chorus.cmd.agent-1.session.submit_result",
                             command({"session_id": sid, "result": {}}), timeout=10)  # fmt: skip
    assert json.loads(reply.data)["status"] == "accepted"
    await nc.close()


async def test_an_agent_listens_on_its_own_inbox_and_answers_pings(bus: Bus) -> None:
    client = Client()
    nc = await client.connect(bus.url, await bus.key("agent-1"), "agent-1")

    async def pong(msg: Any) -> None:
        await msg.respond(b"ok")

    await nc.subscribe("chorus.agent.agent-1.ping", cb=pong)
    await nc.subscribe("chorus.task.agent-1")
    await nc.flush()
    gateway = await nats.connect(busauth.service_url(bus.url, "gateway", bus.nats_dir))
    try:
        answer = await gateway.request("chorus.agent.agent-1.ping", b"", timeout=10)
        assert answer.data == b"ok"
    finally:
        await gateway.close()
    assert client.errors == []
    await nc.close()


async def test_a_revoked_key_is_cut_off_the_bus(bus: Bus) -> None:
    key = await bus.key("agent-1")
    user = key.split("_")[1]
    reader, writer = await raw_session(bus.url, user, key)
    try:
        assert await reader.readline() == b"PONG\r\n"  # in
        assert KeyStore(bus.keys_path).revoke(user)
        assert busauth.sync(bus.nats_dir, bus.keys_path) == 1
        # The reload closes the open connection: reading ends (perhaps after an -ERR).
        said = b"".join([line async for line in reader])
        assert said == b"" or b"Authorization Violation" in said
    finally:
        writer.close()
        await writer.wait_closed()
    assert "Authorization Violation" in await handshake(bus.url, user, key)


async def test_without_a_credential_nobody_gets_on(bus: Bus) -> None:
    assert "Authorization Violation" in await handshake(bus.url)
    assert "Authorization Violation" in await handshake(bus.url, "chorus-engine", "guess")


async def raw_session(
    url: str, user: str | None = None, password: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client connection that sent CONNECT and PING (no client library)."""
    host, port = url.removeprefix("nats://").rsplit("@", 1)[-1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    await reader.readline()  # INFO
    options: dict[str, Any] = {"verbose": False, "pedantic": False}
    if user is not None:
        options.update(user=user, **{"pass": password})
    writer.write(f"CONNECT {json.dumps(options)}\r\nPING\r\n".encode())
    await writer.drain()
    return reader, writer


async def handshake(url: str, user: str | None = None, password: str | None = None) -> str:
    """The server's answer to a raw CONNECT (+ PING): ``PONG`` if let in, else ``-ERR``."""
    reader, writer = await raw_session(url, user, password)
    try:
        return (await reader.readline()).decode()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_the_gateway_reads_streams_but_cannot_change_them(
    bus: Bus, engine: EngineService
) -> None:
    client = Client()
    nc = await client.connect_as(
        bus.url, "chorus-gateway", busauth.service_passwords(bus.nats_dir)["gateway"], None
    )
    info = await nc.jetstream().stream_info("EVENTS")
    assert info.config.name == "EVENTS"
    for subject in ("$JS.API.STREAM.DELETE.EVENTS", "chorus.evt.session.x.SessionFinalised"):
        await nc.publish(subject, b"")
        assert subject.lower() in await client.refused()
    await nc.close()


async def test_the_engine_user_manages_only_its_own_streams(bus: Bus, engine: EngineService):
    """The engine's service user creates and updates its streams (the engine above just
    did, under that user), but cannot delete or purge them, read another stream or run a
    consumer: a leaked engine credential cannot wipe the bus's copy of the log."""
    assert engine.nc is not None and engine.nc.is_connected
    client = Client()
    password = busauth.service_passwords(bus.nats_dir)["engine"]
    nc = await client.connect_as(bus.url, "chorus-engine", password, None)
    info = await nc.jetstream().stream_info("EVENTS")  # allowed: its own stream
    assert info.config.name == "EVENTS"
    for subject in ("$JS.API.STREAM.DELETE.EVENTS", "$JS.API.STREAM.PURGE.EVENTS",
                    "$JS.API.STREAM.DELETE.DLQ", "$JS.API.CONSUMER.CREATE.EVENTS",
                    "$JS.API.STREAM.CREATE.OTHER", "$JS.API.STREAM.INFO.OTHER"):  # fmt: skip
        await nc.publish(subject, b"{}")
        assert subject.lower() in await client.refused()
    await nc.close()
