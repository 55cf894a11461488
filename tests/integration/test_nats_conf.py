"""compose.yaml's NATS cluster on real nats-servers, without Docker: three nodes run
``nats.conf`` as compose mounts it, with the users and the routes' secret that compose's
one-shot ``nats-users`` writes (``chorus bus users``, the command compose gives it) from a
real key store. Agents' keys get exactly an agent's subjects on every node, the Chorus
services get in with the passwords compose gives them, the routes refuse a node without
the secret, and a new key gets in once ``nats-users`` runs again and the nodes reload.

Each compose service gets a directory standing for its container's filesystem: every
mount is a symlink at its container path, to the repository's file (a bind mount) or to
a directory shared by every service mounting that volume. The nodes' addresses are the
only change: loopback with free ports (client and monitoring ports by flag, the route
port by ``NATS_CLUSTER_LISTEN``, which compose sets), and routes to them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from chorus import busauth
from chorus.cluster import free_port
from chorus.contracts.servers import servers
from chorus.contracts.subjects import TOOL_CALLS, TOOL_QUEUE
from chorus.engine.adapters.streams import ensure_streams, until_jetstream_answers
from chorus.natsd import NatsServer, start_nats_server
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from tests.e2e.conftest import (
    async_wait_until,
    bus_admits,
    clean_env,
    cli,
    create_key,
    wait_until,
)
from tests.integration.test_bus_identity import Client

ROOT = Path(__file__).resolve().parents[2]
NODES = ("nats-1", "nats-2", "nats-3")
#: The secrets compose refuses to start without (``${NAME:?...}``).
SECRETS = {
    "CHORUS_ENGINE_PASSWORD": "engine-secret",
    "CHORUS_GATEWAY_PASSWORD": "gateway-secret",
    "POSTGRES_PASSWORD": "unused-here",
}


def services() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose["services"]  # type: ignore[no-any-return]


def interpolate(value: str, env: dict[str, str]) -> str:
    """compose's ``${NAME}`` and ``${NAME:?message}``, from ``env``."""
    return re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", lambda m: env[m.group(1)], value)


@dataclass
class Compose:
    """compose.yaml's NATS services, each in a directory standing for its container."""

    root: Path
    route_ports: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, NatsServer] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # actor -> API key

    def container(self, service: str) -> Path:
        """The service's filesystem, its mounts in place."""
        base = self.root / "containers" / service
        for mount in services()[service].get("volumes", []):
            source, target = str(mount).split(":")[:2]
            path = base / target.lstrip("/")
            if path.is_symlink():
                continue
            if source.startswith("./"):
                origin = ROOT / source
            else:
                origin = self.root / "volumes" / source
                origin.mkdir(parents=True, exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(origin)
        return base

    def path(self, service: str, container_path: str) -> Path:
        return self.container(service) / container_path.lstrip("/")

    def init_command(self) -> list[str]:
        """compose's ``nats-users`` command: its paths in its container here, its routes to
        the nodes' route ports on loopback."""
        command: list[str] = []
        for arg in services()["nats-users"]["command"]:
            if route := re.fullmatch(r"(nats-\d+):\d+", arg):
                arg = f"127.0.0.1:{self.route_ports[route.group(1)]}"
            elif arg.startswith("/"):
                arg = str(self.path("nats-users", arg))
            command.append(arg)
        assert command[0] == "chorus"
        return command

    def run_init(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``nats-users`` as compose runs it, with its environment."""
        given = SECRETS if env is None else env
        environment = {k: interpolate(str(v), given)
                       for k, v in services()["nats-users"]["environment"].items()}  # fmt: skip
        return subprocess.run(
            cli(*self.init_command()[1:]), env=clean_env(**environment),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def start_node(self, name: str) -> NatsServer:
        """A node as compose starts it: ``nats.conf`` with its environment, the JetStream
        store in its ``/data`` volume; its client and monitoring ports free ones here."""
        service = services()[name]
        assert service["command"] == ["-c", "/etc/nats/nats.conf", "-sd", "/data/jetstream"]
        host, port = service["environment"]["NATS_CLUSTER_LISTEN"].rsplit(":", 1)
        assert (host, port) == ("0.0.0.0", "6222")  # noqa: S104 (compose's, replaced here)
        with pytest.MonkeyPatch.context() as env:  # the node's own environment
            for key, value in service["environment"].items():
                env.setenv(key, str(value))
            env.setenv("NATS_CLUSTER_LISTEN", f"127.0.0.1:{self.route_ports[name]}")
            # It runs `-c <config> -sd <data_dir>/jetstream`, and loopback ports.
            server = start_nats_server(
                self.path(name, "/data"), config=self.path(name, "/etc/nats/nats.conf")
            )
        self.nodes[name] = server
        return server

    def create_key(self, actor: str, role: str = "agent") -> str:
        """``chorus keys create`` in a gateway's container (``docker compose exec``)."""
        return create_key(self.path("gateway", "/data"), actor, role)

    def service_credentials(self, service: str) -> dict[str, str]:
        """The user and password in the ``CHORUS_NATS_URL`` compose gives ``service``."""
        url = interpolate(services()[service]["environment"]["CHORUS_NATS_URL"], SECRETS)
        return servers(url)[1]

    def stop(self) -> None:
        for server in self.nodes.values():
            server.stop()


def layout(root: Path) -> Compose:
    return Compose(root, {name: free_port() for name in NODES})


@pytest.fixture
def compose(tmp_path: Path) -> Iterator[Compose]:
    """The layout, nothing started."""
    fresh = layout(tmp_path)
    try:
        yield fresh
    finally:
        fresh.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    """The init (its first run creates the key store), two agents' keys, the init again,
    then three nodes clustered, the streams created at R3 by the engine's user (through
    the routes: they authenticate, or there is no quorum). Shared by the tests of this
    module: none changes what another checks."""
    running = layout(tmp_path_factory.mktemp("compose"))
    try:
        assert running.run_init().returncode == 0
        for actor in ("agent-1", "agent-2"):
            running.keys[actor] = running.create_key(actor)
        done = running.run_init()
        assert done.returncode == 0, done.stderr
        for name in NODES:
            running.start_node(name)
        asyncio.run(create_streams(running))
        yield running
    finally:
        running.stop()


async def create_streams(compose: Compose) -> None:
    nc = await nats.connect(compose.nodes["nats-1"].url, **compose.service_credentials("engine"))
    try:
        await until_jetstream_answers(lambda: ensure_streams(nc.jetstream(timeout=5), 3),
                                      "the cluster's JetStream", timeout=60)  # fmt: skip
    finally:
        await nc.close()


# The users -------------------------------------------------------------------------------


async def test_an_agent_key_may_do_what_an_agent_may_and_nothing_more_on_every_node(
    cluster: Compose,
) -> None:
    users = cluster.path("nats-1", "/etc/nats/users/users.conf").read_text()
    key = cluster.keys["agent-1"]
    key_id = key.split("_")[1]
    entry = next(u for u in json.loads(users.removeprefix("authorization: "))["users"]
                 if u["user"] == key_id)  # fmt: skip
    assert entry["permissions"] == busauth.actor_permissions("agent-1")
    gateway = await nats.connect(
        cluster.nodes["nats-3"].url, **cluster.service_credentials("gateway")
    )
    for node in cluster.nodes.values():
        client = Client()
        nc = await client.connect(node.url, key, "agent-1")

        async def pong(msg: Any) -> None:
            await msg.respond(b"pong")

        await nc.subscribe("chorus.agent.agent-1.ping", cb=pong)
        await nc.subscribe("chorus.task.agent-1")
        await nc.subscribe("_INBOX_agent-1.>")
        await nc.publish("chorus.cmd.agent-1.agent.heartbeat", b"{}")
        await nc.flush()
        # Through the routes (once its interest reached the gateway's node): the gateway's
        # user pings it, it answers.
        answer = await async_wait_until(partial(ping, gateway), 30, "agent-1's pong")
        assert answer == b"pong"
        assert not client.violation.is_set(), client.errors
        for subject in ("chorus.cmd.agent-2.session.open", "chorus.evt.session.x.Opened",
                        "chorus.dlq.forged", "chorus.part.0", "chorus.task.agent-2",
                        "$JS.API.STREAM.INFO.EVENTS", "$JS.API.STREAM.DELETE.EVENTS",
                        "$KV.chorus_partitions.table", "_INBOX.abc"):  # fmt: skip
            await nc.publish(subject, b"{}")
            assert subject.lower() in await client.refused()
        for subject in ("chorus.cmd.>", "chorus.evt.>", "_INBOX.>", "_INBOX_agent-2.>",
                        "chorus.task.agent-2", "chorus.part.>"):  # fmt: skip
            await nc.subscribe(subject)
            assert subject.lower() in await client.refused()
        await nc.close()
    await gateway.close()


async def test_the_services_get_in_with_the_passwords_compose_gives_them(
    cluster: Compose,
) -> None:
    """The engine's user made the streams (the fixture); the gateway's reads them on
    another node. users.conf keeps only hashes of the services' passwords."""
    users = cluster.path("nats-1", "/etc/nats/users/users.conf").read_text()
    for password in (SECRETS["CHORUS_ENGINE_PASSWORD"], SECRETS["CHORUS_GATEWAY_PASSWORD"]):
        assert password not in users
    credentials = cluster.service_credentials("gateway")
    assert credentials["user"] == busauth.SERVICES["gateway"]
    nc = await nats.connect(cluster.nodes["nats-2"].url, **credentials)
    info = await nc.jetstream().stream_info("EVENTS")
    assert info.config.num_replicas == 3
    await nc.close()
    engine = cluster.service_credentials("engine")
    for node in cluster.nodes.values():
        assert bus_admits(node.url, engine["user"], engine["password"])
        assert not bus_admits(node.url, engine["user"], "guess")
        assert not bus_admits(node.url, busauth.SERVICES["demo"], "")  # no demo user here
        assert not bus_admits(node.url, "", "")


async def ping(nc: NATS) -> bytes | None:
    try:
        return (await nc.request("chorus.agent.agent-1.ping", b"", timeout=5)).data
    except (NoRespondersError, TimeoutError):
        return None


async def test_only_the_gateway_answers_tool_calls_and_agents_call_as_themselves(
    cluster: Compose,
) -> None:
    """Tool calls (``chorus.cmd.<actor>.tool.call``) are the gateways' to answer (queue group
    chorus-tools), through the routes here: the gateway on one node, the agent on another."""
    gateway, agent = Client(), Client()
    credentials = cluster.service_credentials("gateway")
    gnc = await gateway.connect_as(cluster.nodes["nats-2"].url, credentials["user"],
                                   credentials["password"], None)  # fmt: skip
    anc = await agent.connect(cluster.nodes["nats-1"].url, cluster.keys["agent-1"], "agent-1")

    async def answer(msg: Msg) -> None:
        await msg.respond(msg.subject.encode())

    await gnc.subscribe(TOOL_CALLS, queue=TOOL_QUEUE, cb=answer)
    await gnc.flush()

    async def call() -> bytes | None:
        try:
            return (await anc.request("chorus.cmd.agent-1.tool.call", b"{}", timeout=5)).data
        except (NoRespondersError, TimeoutError):  # the gateway's interest not there yet
            return None

    assert (
        await async_wait_until(call, 30, "the gateway's answer") == b"chorus.cmd.agent-1.tool.call"
    )
    assert not gateway.violation.is_set() and not agent.violation.is_set()
    # An agent can neither take tool calls (to answer them itself) nor call as another.
    await anc.subscribe(TOOL_CALLS, queue=TOOL_QUEUE)
    assert "chorus.cmd.*.tool.call" in await agent.refused()
    await anc.publish("chorus.cmd.agent-2.tool.call", b"{}")
    assert "chorus.cmd.agent-2.tool.call" in await agent.refused()
    await anc.close()
    await gnc.close()


# The routes ------------------------------------------------------------------------------


def route_answer(port: int, user: str | None = None, password: str | None = None) -> bytes:
    """A route's CONNECT (+ PING) on a node's route port: ``PONG`` if let in."""
    options: dict[str, Any] = {"verbose": False, "name": "stranger", "cluster": "chorus"}
    if user is not None:
        options.update(user=user, **{"pass": password})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        reader = conn.makefile("rb")
        reader.readline()  # INFO
        conn.sendall(f"CONNECT {json.dumps(options)}\r\nPING\r\n".encode())
        return reader.readline()


def monitor(node: NatsServer, endpoint: str) -> dict[str, Any]:
    assert node.monitor_url is not None
    with urllib.request.urlopen(f"{node.monitor_url}/{endpoint}", timeout=5) as response:  # noqa: S310
        found: dict[str, Any] = json.loads(response.read())
        return found


def routed(node: NatsServer) -> set[str]:
    """The server names and ids of the nodes ``node`` has routes with."""
    routes = monitor(node, "routez").get("routes") or []
    return {r["remote_name"] for r in routes} | {r["remote_id"] for r in routes}


def test_the_routes_refuse_a_node_without_the_secret(cluster: Compose, tmp_path: Path) -> None:
    secret = cluster.path("nats-users", "/nats-users/route.secret").read_text()
    for name, node in cluster.nodes.items():
        others = {n for n in NODES if n != name}
        wait_until(lambda n=node, o=others: o <= routed(n), 30, f"{name}'s routes")
        port = cluster.route_ports[name]
        assert b"Authorization Violation" in route_answer(port)
        assert b"Authorization Violation" in route_answer(port, "route", "guess")
        assert route_answer(port, busauth.ROUTE_USER, secret).startswith(b"PONG")

    # A fourth node with compose's files but its own init's secret, routed to the three.
    stranger = layout(tmp_path / "stranger")
    stranger.route_ports = {**cluster.route_ports, "nats-1": stranger.route_ports["nats-1"]}
    assert stranger.run_init().returncode == 0
    assert stranger.path("nats-users", "/nats-users/route.secret").read_text() != secret
    try:
        node = stranger.start_node("nats-1")
        log = node.data_dir / "nats-server.log"
        wait_until(lambda: "Authorization Violation" in log.read_text(), 30, "a refusal")
        stranger_id = monitor(node, "varz")["server_id"]
        for member in cluster.nodes.values():
            assert stranger_id not in routed(member)
        assert not routed(node)
    finally:
        stranger.stop()


# New keys --------------------------------------------------------------------------------


def reload_nodes(compose: Compose) -> None:
    """``docker compose kill -s SIGHUP nats-1 nats-2 nats-3``."""
    for node in compose.nodes.values():
        os.kill(node.process.pid, signal.SIGHUP)


def admitted_everywhere(compose: Compose, key: str) -> bool:
    return all(bus_admits(n.url, key.split("_")[1], key) for n in compose.nodes.values())


def refused_everywhere(compose: Compose, key: str) -> bool:
    return not any(bus_admits(n.url, key.split("_")[1], key) for n in compose.nodes.values())


def test_a_new_key_gets_on_every_node_once_the_init_runs_again_and_the_nodes_reload(
    cluster: Compose,
) -> None:
    key = cluster.create_key("agent-7")
    assert refused_everywhere(cluster, key)  # the nodes have not been told
    assert cluster.run_init().returncode == 0
    assert refused_everywhere(cluster, key)  # written, not yet read
    reload_nodes(cluster)
    wait_until(partial(admitted_everywhere, cluster, key), 30, "every node to admit agent-7")
    assert admitted_everywhere(cluster, cluster.keys["agent-1"])  # the others stay in

    # Revoked: the same two steps shut it out everywhere.
    revoked = subprocess.run(
        cli("keys", "revoke", key.split("_")[1], "--data-dir",
            str(cluster.path("gateway", "/data"))),
        env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    assert cluster.run_init().returncode == 0
    reload_nodes(cluster)
    wait_until(partial(refused_everywhere, cluster, key), 30, "every node to refuse agent-7")


# No defaults -----------------------------------------------------------------------------


def test_the_init_writes_nothing_without_the_services_passwords(compose: Compose) -> None:
    done = compose.run_init({**SECRETS, "CHORUS_GATEWAY_PASSWORD": ""})
    assert done.returncode == 2
    assert "CHORUS_GATEWAY_PASSWORD" in done.stderr
    assert not compose.path("nats-users", "/nats-users/users.conf").exists()


def test_a_node_does_not_start_without_what_the_init_writes(compose: Compose) -> None:
    with pytest.raises(RuntimeError, match="exited early"):
        compose.start_node("nats-1")
    log = compose.path("nats-1", "/data/nats-server.log").read_text()
    assert "routes.conf" in log or "users.conf" in log, log
