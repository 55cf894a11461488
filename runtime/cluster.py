"""``chorus cluster``: the scale-out layout on one machine, to rehearse it and to try it.

Three nats-server nodes clustered on loopback (JetStream, every stream replicated on all
of them), the event store on a database server (PostgreSQL), two engines sharing the
command queue group, one projector and two gateways. It is the layout a deployment that
outgrew ``chorus up`` runs on several hosts, squeezed onto one so that a test (and CI,
which has no Docker) can kill any part of it and check that nothing is lost.

Every member keeps its ports for the life of the cluster, so a member that is killed and
started again (``revive``) is found where it was: clients reconnect to the node they
knew, or to any other node of the cluster (they learn them from the server).

The read models are in PostgreSQL too (``CHORUS_READ_STORE_URL``; by default the events'
database, in a schema of their own: ``shared_read_store_url``), written by the projector
and read by every gateway. The bus is open (no NATS users) and listens on loopback only:
the per-key users of ``chorus up`` (runtime/busauth.py) are not wired into the cluster yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import nats
from chorus.audit.bundle import create_signing_key
from chorus.audit.ledger import ensure_ledger
from chorus.bootstrap import bootstrap
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


def node_config(name: str, route_port: int, route_ports: list[int], monitor_port: int) -> str:
    """A node's config: its name (JetStream needs one per node), its monitoring port
    (``/healthz``, ``/connz``) and the cluster's routes.

    Every node lists every route, its own included (the server ignores itself): the nodes
    find each other whichever starts first, and a restarted node rejoins."""
    routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in route_ports)
    return (
        f'server_name: "{name}"\n'
        f'http: "127.0.0.1:{monitor_port}"\n'
        "cluster {\n"
        f'  name: "{CLUSTER_NAME}"\n'
        f'  listen: "127.0.0.1:{route_port}"\n'
        f"  routes: [{routes}]\n"
        "}\n"
    )


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


class Cluster:
    """Start, kill, revive and stop the members of the layout (see the module's docstring)."""

    def __init__(self, settings: Settings, layout: ClusterLayout | None = None) -> None:
        if settings.read_store_url is None and (url := shared_read_store_url(settings)):
            settings = settings.model_copy(update={"read_store_url": url})
        self.settings = settings.resolved()
        self.layout = layout or ClusterLayout()
        data_dir = Path(self.settings.data_dir)
        self.data_dir = data_dir
        route_ports = [free_port() for _ in range(self.layout.nodes)]
        self.nodes = [
            Node(f"nats-{i + 1}", free_port(), route_ports[i], free_port(),
                 data_dir / f"nats-{i + 1}")
            for i in range(self.layout.nodes)
        ]  # fmt: skip
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            (node.data_dir / "cluster.conf").write_text(
                node_config(node.name, node.route_port, route_ports, node.monitor_port)
            )
        ports = self.layout.gateway_ports or [
            self.settings.port + i for i in range(self.layout.gateways)
        ]
        self.gateway_ports = ports[: self.layout.gateways]
        self.members: list[Member] = []
        base = {
            **_base_env(),
            **self.settings.child_env(),
            "CHORUS_NATS_URL": self.nats_url,
            "CHORUS_STREAM_REPLICAS": str(self.layout.nodes),
        }
        for i in range(self.layout.engines):
            # Each engine appends the seals it makes to its own anchor file.
            anchor = data_dir / "audit" / f"seal-anchor-engine-{i + 1}"
            self._add(f"engine-{i + 1}", "engine", {**base, "CHORUS_SEAL_ANCHOR_PATH": str(anchor)})
        self._add("project", "project", base)
        for i, port in enumerate(self.gateway_ports):
            self._add(f"gateway-{i + 1}", "gateway", {**base, "CHORUS_PORT": str(port)})

    def _add(self, name: str, role: str, env: dict[str, str]) -> None:
        log_path = self.data_dir / "logs" / f"{name}.log"
        self.members.append(Member(name, role, dict(env), log_path))

    # Addresses ---------------------------------------------------------------------------

    @property
    def nats_url(self) -> str:
        """Every node, comma-separated (what ``CHORUS_NATS_URL`` takes)."""
        return ",".join(node.url for node in self.nodes)

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
        for node in self.nodes:
            self._start_node(node)
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

    def _start_node(self, node: Node) -> None:
        node.server = start_nats_server(
            node.data_dir, port=node.port, config=node.data_dir / "cluster.conf", monitor=False
        )

    async def _ensure_streams(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        nc = await nats.connect(
            self.nats_url.split(","), name="chorus-cluster", max_reconnect_attempts=-1
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
        nc = await nats.connect(self.nats_url.split(","), name="chorus-cluster")
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
            member.process = subprocess.Popen(
                [sys.executable, "-m", "chorus.cli", member.role],
                env=member.env,
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
        lines.append(
            f"  NATS       {self.nats_url}  (open bus on loopback; streams R{len(self.nodes)})"
        )
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


def _base_env() -> dict[str, str]:
    import os

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
