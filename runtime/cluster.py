"""``chorus cluster``: the scale-out layout on one machine, to rehearse it and to try it.

Three nats-server nodes clustered on loopback (JetStream, every stream replicated on all
of them), the event store on a database server (PostgreSQL), two engines sharing the
command queue group, one projector and two gateways. It is the layout a deployment that
outgrew ``chorus up`` runs on several hosts, squeezed onto one so that a test (and CI,
which has no Docker) can kill any part of it and check that nothing is lost.

Every member keeps its ports for the life of the cluster, so a member that is killed and
started again (``revive``) is found where it was: clients reconnect to the node they
knew, or to any other node of the cluster (they learn them from the server).

The bus is secured as ``chorus up``'s (runtime/busauth.py): one NATS user per API key and
per service, written from the key store to ``<data_dir>/nats/users.conf``, which every
node includes; ``chorus keys create --data-dir <data_dir>`` rewrites it and reloads every
node. The engines and the gateways connect as their service users, the routes between
the nodes with a secret of their own. The read models are in PostgreSQL too
(``CHORUS_READ_STORE_URL``; by default the events' database, in a schema of their own:
``shared_read_store_url``), written by the projector and read by every gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import nats
from chorus import busauth
from chorus.audit.bundle import create_signing_key
from chorus.audit.ledger import ensure_ledger
from chorus.bootstrap import bootstrap
from chorus.contracts.servers import servers
from chorus.engine.adapters.streams import ensure_streams
from chorus.natsd import NatsServer, die_with_parent, start_nats_server
from chorus.settings import Settings
from chorus.store.datastore import close_recorder
from chorus.store.snapshots import snapshot_recorder

CLUSTER_NAME = "chorus"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def node_config(
    name: str, route_port: int, route_ports: list[int], monitor_port: int,
    route_secret: str | None = None,
) -> str:  # fmt: skip
    """A node's config: its name (JetStream needs one per node), its monitoring port
    (``/healthz``, ``/connz``), the cluster's routes and, on a secured bus, its users.

    Every node lists every route, its own included (the server ignores itself): the nodes
    find each other whichever starts first, and a restarted node rejoins. With a
    ``route_secret`` the routes authenticate (a route sees every message, so an
    unauthenticated route port would bypass every user's permissions) and the users come
    from ``users.conf`` one directory up, which ``chorus keys`` rewrites (runtime/busauth.py)."""
    credentials = f"route:{route_secret}@" if route_secret else ""
    routes = ", ".join(f'"nats-route://{credentials}127.0.0.1:{port}"' for port in route_ports)
    lines = [f'server_name: "{name}"', f'http: "127.0.0.1:{monitor_port}"']
    if route_secret:
        lines.append(f'include "../{busauth.CONFIG_NAME}"')
    lines += ["cluster {", f'  name: "{CLUSTER_NAME}"', f'  listen: "127.0.0.1:{route_port}"']
    if route_secret:
        lines.append(f'  authorization {{ user: "route", password: "{route_secret}" }}')
    lines += [f"  routes: [{routes}]", "}"]
    return "\n".join(lines) + "\n"


@dataclass
class Node:
    """One nats-server of the cluster, on fixed ports."""

    name: str
    port: int
    route_port: int
    monitor_port: int
    data_dir: Path
    server: NatsServer | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def alive(self) -> bool:
        return self.server is not None and self.server.process.poll() is None


@dataclass
class Member:
    """A Chorus process of the cluster: ``engine``, ``project`` or ``gateway``."""

    name: str
    role: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class ClusterLayout:
    nodes: int = 3
    engines: int = 2
    gateways: int = 2
    #: The gateways' ports (default: consecutive from ``settings.port``).
    gateway_ports: list[int] = field(default_factory=list)
    #: No NATS users at all (anyone on this host may publish anything): only for
    #: measuring what the users' permission checks cost.
    open_bus: bool = False


class Cluster:
    """Start, kill, revive and stop the members of the layout (see the module's docstring)."""

    def __init__(self, settings: Settings, layout: ClusterLayout | None = None) -> None:
        if settings.read_store_url is None and (url := shared_read_store_url(settings)):
            settings = settings.model_copy(update={"read_store_url": url})
        self.settings = settings.resolved()
        self.layout = layout or ClusterLayout()
        data_dir = Path(self.settings.data_dir)
        self.data_dir = data_dir
        #: The users (``users.conf``), the services' passwords and every node's directory.
        self.nats_dir = data_dir / "nats"
        self.secured = not self.layout.open_bus
        self._route_secret = busauth.route_secret(self.nats_dir) if self.secured else None
        self.nodes = [
            Node(f"nats-{i + 1}", 0, 0, 0, self.nats_dir / f"nats-{i + 1}")
            for i in range(self.layout.nodes)
        ]
        self._pick_ports()
        ports = self.layout.gateway_ports or [
            self.settings.port + i for i in range(self.layout.gateways)
        ]
        self.gateway_ports = ports[: self.layout.gateways]
        self.members: list[Member] = []
        # CHORUS_NATS_URL is added at each start (``_spawn``): the nodes' ports are final then.
        base = {
            **_base_env(),
            **self.settings.child_env(),
            "CHORUS_STREAM_REPLICAS": str(self.layout.nodes),
        }
        for i in range(self.layout.engines):
            # Each engine appends the seals it makes to its own anchor file.
            anchor = data_dir / "audit" / f"seal-anchor-engine-{i + 1}"
            self._add(f"engine-{i + 1}", "engine", {**base, "CHORUS_SEAL_ANCHOR_PATH": str(anchor)})
        self._add("project", "project", base)
        for i, port in enumerate(self.gateway_ports):
            self._add(f"gateway-{i + 1}", "gateway", {**base, "CHORUS_PORT": str(port)})

    def _pick_ports(self) -> None:
        """Free ports for every node, and each node's config written with them."""
        for node in self.nodes:
            node.port, node.route_port, node.monitor_port = free_port(), free_port(), free_port()
        route_ports = [node.route_port for node in self.nodes]
        for node in self.nodes:
            config = node_config(
                node.name, node.route_port, route_ports, node.monitor_port, self._route_secret
            )
            _write_private(node.data_dir / "cluster.conf", config)

    def _add(self, name: str, role: str, env: dict[str, str]) -> None:
        log_path = self.data_dir / "logs" / f"{name}.log"
        self.members.append(Member(name, role, dict(env), log_path))

    # Addresses ---------------------------------------------------------------------------

    @property
    def nats_url(self) -> str:
        """Every node, comma-separated (what ``CHORUS_NATS_URL`` takes)."""
        return ",".join(node.url for node in self.nodes)

    def service_nats_url(self, service: str) -> str:
        """Every node, each URL with a service's credentials (``engine``, ``gateway``);
        without them on an open bus."""
        if not self.secured:
            return self.nats_url
        return ",".join(
            busauth.service_url(node.url, service, self.nats_dir) for node in self.nodes
        )

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://{self.settings.host}:{port}" for port in self.gateway_ports]

    def everything(self) -> list[Node | Member]:
        return [*self.nodes, *self.members]

    def member(self, name: str) -> Member | Node:
        for item in self.everything():
            if item.name == name:
                return item
        raise KeyError(name)

    # Life cycle --------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Nodes first, then the streams at R<nodes> (once the cluster elected its JetStream
        leader), then the engines, the projector and the gateways."""
        create_signing_key(Path(str(self.settings.audit_key_path)))
        prepare_store(self.settings)
        if self.secured:  # one NATS user per API key and per service, from the key store
            busauth.write_config(self.nats_dir, Path(str(self.settings.keys_path)))
        self._start_nodes()
        asyncio.run(self._ensure_streams(timeout))
        # One engine first, alone until it answers: it creates the tables it needs (two
        # engines doing that at once on a fresh PostgreSQL schema race, and one exits).
        engines = [m for m in self.members if m.role == "engine"]
        if engines:
            self._spawn(engines[0])
            asyncio.run(self._wait_for_engine(timeout))
        for member in self.members:
            if member.process is None:
                self._spawn(member)

    def _start_nodes(self, attempts: int = 3) -> None:
        """Every node, on ports picked again if one was taken between being found free and
        being bound (another process on a busy machine)."""
        for attempt in range(attempts):
            try:
                for node in self.nodes:
                    self._start_node(node)
                return
            except RuntimeError:
                for node in self.nodes:
                    if node.server is not None:
                        node.server.stop()
                        node.server = None
                if attempt == attempts - 1:
                    raise
                self._pick_ports()

    def _start_node(self, node: Node) -> None:
        node.server = start_nats_server(
            node.data_dir, port=node.port, config=node.data_dir / "cluster.conf", monitor=False
        )

    async def _ensure_streams(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # As the engine, which owns the streams.
        urls, credentials = servers(self.service_nats_url("engine"))
        nc = await nats.connect(
            urls, name="chorus-cluster", max_reconnect_attempts=-1, **credentials
        )
        try:
            while True:
                try:
                    await ensure_streams(nc.jetstream(timeout=5), self.layout.nodes)
                    return
                except Exception as error:  # no JetStream leader yet, or not enough peers
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"JetStream cluster not ready: {error!r}") from None
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    async def _wait_for_engine(self, timeout: float) -> None:
        """Until an engine answers on the command subjects (any answer, a refusal too)."""
        deadline = time.monotonic() + timeout
        # As the gateway, which may send commands for any actor.
        urls, credentials = servers(self.service_nats_url("gateway"))
        nc = await nats.connect(urls, name="chorus-cluster", **credentials)
        try:
            while True:
                try:
                    await nc.request("chorus.cmd.cluster.session.ping", b"{}", timeout=1)
                    return
                except Exception as error:  # no responders yet, or no answer in time
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no engine answered: {error!r}") from None
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def _spawn(self, member: Member) -> None:
        member.log_path.parent.mkdir(parents=True, exist_ok=True)
        with member.log_path.open("ab") as log_file:
            log_file.write(f"--- start {member.starts + 1} ---\n".encode())
            log_file.flush()
            # Engines and gateways as their service users; the projector does not use the bus.
            role = member.role
            nats_url = self.nats_url if role == "project" else self.service_nats_url(role)
            member.process = subprocess.Popen(
                [sys.executable, "-m", "chorus.cli", member.role],
                env={**member.env, "CHORUS_NATS_URL": nats_url},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # no orphans if we are killed
                start_new_session=True,  # a terminal's Ctrl-C reaches only the cluster
            )
        member.starts += 1

    def kill(self, name: str) -> None:
        """SIGKILL one member or node: no shutdown code runs, whatever was in flight is cut."""
        item = self.member(name)
        process = item.server.process if isinstance(item, Node) and item.server else None
        if isinstance(item, Member):
            process = item.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(15)

    def dead(self) -> list[str]:
        return [item.name for item in self.everything() if not item.alive]

    def revive(self, *names: str) -> list[str]:
        """Start again, on the same ports, every node and member that is not running (or
        only those ``names``, if given)."""
        revived = [name for name in self.dead() if not names or name in names]
        for node in self.nodes:
            if node.name in revived:
                self._start_node(node)
        for member in self.members:
            if member.name in revived:
                self._spawn(member)
        return revived

    def stop(self, timeout: float = 10.0) -> None:
        """Gateways first (no new commands), then the projector and engines, then NATS."""
        members = [m for m in reversed(self.members) if m.process is not None]
        for member in members:
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for member in members:
            assert member.process is not None
            try:
                member.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()
        for node in self.nodes:
            if node.server is not None:
                node.server.stop()

    def banner(self) -> str:
        s = self.settings
        lines = ["Chorus cluster is up"]
        for node in self.nodes:
            lines.append(
                f"  {node.name:<10} {node.url}  (route 127.0.0.1:{node.route_port}, "
                f"monitor {node.monitor_url})"
            )
        bus = (
            f"one NATS user per API key and per service ({self.nats_dir / busauth.CONFIG_NAME})"
            if self.secured else "open: no NATS users, loopback only"
        )  # fmt: skip
        lines.append(f"  NATS       {self.nats_url}  (streams R{len(self.nodes)})")
        lines.append(f"  bus        {bus}")
        for i, url in enumerate(self.gateway_urls):
            lines.append(f"  gateway-{i + 1:<2} {url}/api/v1")
        engines = [m.name for m in self.members if m.role == "engine"]
        lines += [
            f"  engines    {', '.join(engines)} (one command queue group)",
            f"  events     {s.database_url}",
            f"  read store {s.read_store_url}",
            f"  keys       {s.keys_path}  (chorus keys create --data-dir {s.data_dir} ...)",
            f"  logs       {self.data_dir}/logs/",
            "",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)


def shared_read_store_url(settings: Settings) -> str | None:
    """With the events on PostgreSQL, the read models' default: the same database, in a
    schema of their own (``read``, or ``<the events' schema>_read``), which the projector
    writes and every gateway reads wherever it runs. None for an event store on SQLite
    (the read models stay in ``<data_dir>/read.db`` then)."""
    url = str(settings.database_url or "")
    if not url.startswith(("postgresql://", "postgres://")):
        return None
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    events_schema = query.pop("schema", [None])[0]
    query["schema"] = [f"{events_schema}_read" if events_schema else "read"]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


def prepare_store(settings: Settings) -> None:
    """Create the event store's tables before anything uses them: processes creating them
    at once on a fresh PostgreSQL schema race (``CREATE TABLE IF NOT EXISTS`` is not
    atomic there), and the loser would exit."""
    recorder = bootstrap(settings).recorder()
    try:
        ensure_ledger(recorder)
        snapshot_recorder(recorder)
    finally:
        close_recorder(recorder)


def _write_private(path: Path, text: str) -> None:
    """A file only its owner reads: a node's config holds the route secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    path.chmod(0o600)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}


def run_cluster(settings: Settings, layout: ClusterLayout) -> int:
    """Start the layout, print its endpoints, restart what dies, stop on SIGINT/SIGTERM."""
    cluster = Cluster(settings, layout)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        cluster.start()
        print(cluster.banner(), flush=True)
        while not stop:
            for name in cluster.dead():
                print(f"chorus: {name} exited; starting it again", file=sys.stderr, flush=True)
            with contextlib.suppress(OSError, RuntimeError):
                cluster.revive()
            time.sleep(1.0)
    finally:
        print("chorus: stopping", flush=True)
        cluster.stop()
    return 0
