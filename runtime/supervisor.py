"""``chorus up``: the embedded deployment on one machine, as a small process supervisor.

Starts a nats-server (unless ``CHORUS_NATS_URL`` names one), then the engine, projector
and gateway as child processes (so they use every core), restarts a child that dies (the
nats-server too, on the same port, so every client reconnects to the same URL), and on
Ctrl-C / SIGTERM stops them all. Each child also gets SIGTERM if the supervisor itself is
killed (PR_SET_PDEATHSIG), so no orphan survives.

One ``chorus up`` per data dir: a second one would run a second nats-server on the same
JetStream files and a second engine on the same stores. The data dir's lock file (held
while the supervisor lives, released by the kernel when it dies) says who holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import nats
from chorus import busauth
from chorus.aio import wait_event
from chorus.audit.bundle import create_signing_key
from chorus.engine.adapters.streams import ensure_streams
from chorus.gateway.keys import KeyStore
from chorus.natsd import NatsServer, die_with_parent, start_nats_server
from chorus.permissions import tighten
from chorus.settings import Settings
from chorus.telemetry import MULTIPROC_ENV, fresh_metrics_dir, process_died
from chorus.typesfile import load_workflow_types

#: The relay (and the sealer) run beside the engine rather than in it, so the engine's
#: interpreter is left to commands (bench.dispatch: a quarter less engine CPU a phase).
ROLES = ("engine", "relay", "project", "gateway")
#: The bus user a child connects as: the relay is the engine's outbound half.
BUS_USER = {"relay": "engine"}
#: ``chorus up --demo`` also runs ``chorus demo``: example agents (runtime/agent_demo.py).
DEMO_ROLE = "demo"
NATS_PORT = 4222
LOCK_FILE = "chorus.pid"


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold the data dir's lock (exclusive, for the life of this process) or refuse with
    the PID of the ``chorus up`` that holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise SystemExit(
            f"chorus: the data dir {data_dir} is in use by another chorus up (pid {holder}); "
            "stop it first, or use another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None if it can), checked the way servers
    bind (``SO_REUSEADDR``, so a port in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.strerror or str(error)
    return None


def choose_nats_port(nats_dir: Path, wanted: int | None) -> int:
    """The embedded nats-server's port: ``wanted`` (``--nats-port``) if given; else the port
    used last time (kept in ``<nats dir>/port``), else 4222, else any free one. Kept stable
    so that clients outside ``chorus up`` keep their URL across restarts."""
    if wanted is not None:
        if problem := port_problem("127.0.0.1", wanted):
            raise SystemExit(f"chorus: cannot run NATS on port {wanted}: {problem}")
        return wanted
    remembered = nats_dir / "port"
    candidates = [NATS_PORT]
    with contextlib.suppress(OSError, ValueError):
        candidates.insert(0, int(remembered.read_text().strip()))
    for port in candidates:
        if port_problem("127.0.0.1", port) is None:
            return port
    return _free_port()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Child:
    role: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)


class Supervisor:
    def __init__(self, settings: Settings, *, out: object = None, demo: bool = False) -> None:
        self.settings = settings.resolved()
        self.nats: NatsServer | None = None
        self.children = [Child(role) for role in ROLES + ((DEMO_ROLE,) if demo else ())]
        self.stopping = False
        self.nats_port: int | None = None
        self.nats_restarts = 0
        self.nats_started_at = 0.0
        self._lock: IO[str] | None = None
        self.nats_dir = Path(self.settings.data_dir) / "nats"
        self.metrics_dir: Path | None = None

    def _spawn(self, child: Child) -> None:
        env = {**_base_env(), **self.settings.child_env()}
        user = BUS_USER.get(child.role, child.role)
        if self.nats is not None and user in busauth.SERVICES:
            # Each service connects as its own least-rights NATS user.
            env["CHORUS_NATS_URL"] = busauth.service_url(self.nats.url, user, self.nats_dir)
        if child.role == "engine":
            env["CHORUS_ENGINE_RELAY"] = "false"  # the relay child runs them
        if self.metrics_dir is not None:  # one /metrics scrape shows every child
            env[MULTIPROC_ENV] = str(self.metrics_dir)
        log_path = Path(self.settings.data_dir) / "logs" / f"{child.role}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "chorus.cli", child.role],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # no orphans if we are killed
                # Own process group: a terminal's Ctrl-C reaches only us, and we stop the
                # children in order (NATS last, so they can drain).
                start_new_session=True,
            )
        child.started_at = time.monotonic()

    async def start(self) -> None:
        s = self.settings
        self._lock = lock_data_dir(s.data_dir)
        tighten(s.data_dir)  # also what an older version or a hand left group-readable
        if problem := port_problem(s.host, s.port):
            # Fail fast: a gateway that cannot bind would restart forever, and whoever
            # holds the port could answer the banner's health check.
            raise SystemExit(
                f"chorus: cannot serve the API on {s.host}:{s.port}: {problem} "
                "(another program is using it? pick one with --port)"
            )
        self.metrics_dir = fresh_metrics_dir(Path(s.data_dir))
        # The embedded deployment signs audit bundles; the gateway never creates the key.
        create_signing_key(Path(str(s.audit_key_path)))
        try:  # fail fast with the reason, instead of a gateway that keeps restarting
            load_workflow_types(s.workflow_types)
        except ValueError as error:
            raise SystemExit(f"chorus: {error}") from None
        setup_url = s.nats_url
        if not s.nats_url:
            # One NATS user per API key and per service, from the key store (busauth).
            config = busauth.write_config(self.nats_dir, Path(str(s.keys_path)))
            nats_dir = self.nats_dir
            self.nats_port = choose_nats_port(nats_dir, s.nats_port)
            try:
                self.nats = start_nats_server(
                    nats_dir, port=self.nats_port, config=config, monitor=False
                )
            except RuntimeError:
                if s.nats_port is not None:
                    raise
                # Someone took the port between the check and the bind: any free one.
                self.nats_port = _free_port()
                self.nats = start_nats_server(
                    nats_dir, port=self.nats_port, config=config, monitor=False
                )
            (nats_dir / "port").write_text(f"{self.nats_port}\n")
            self.nats_started_at = time.monotonic()
            self.settings = s = s.model_copy(update={"nats_url": self.nats.url})
            setup_url = busauth.service_url(self.nats.url, "engine", self.nats_dir)
        assert setup_url is not None
        try:
            nc = await nats.connect(
                setup_url, name="chorus-up", connect_timeout=5, max_reconnect_attempts=2
            )
        except Exception as error:
            raise SystemExit(f"chorus: cannot reach NATS at {s.nats_url}: {error}") from None
        try:
            await ensure_streams(nc.jetstream(), s.stream_replicas)
        finally:
            await nc.close()
        for child in self.children:
            self._spawn(child)

    def first_admin_key(self) -> str | None:
        """On first start, create an admin key; it is printed once and stored hashed."""
        assert self.settings.keys_path is not None
        store = KeyStore(Path(self.settings.keys_path))
        if store.count("admin") == 0:
            key = store.create("admin", "admin")
            if self.nats is not None:
                busauth.sync(self.nats_dir, Path(self.settings.keys_path))
            return key
        return None

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart children that exit, with a growing pause if they keep failing."""
        while not stop.is_set():
            for child in self.children:
                assert child.process is not None
                code = child.process.poll()
                if code is None:
                    continue
                if self.metrics_dir is not None:
                    process_died(self.metrics_dir, child.process.pid)
                quick = time.monotonic() - child.started_at < 10
                child.restarts = child.restarts + 1 if quick else 1
                delay = min(0.5 * 2 ** min(child.restarts, 6), 30.0)
                print(
                    f"chorus: {child.role} exited with {code}; restarting in {delay:.1f}s "
                    f"(log: {self.settings.data_dir}/logs/{child.role}.log)",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(delay)
                if not stop.is_set():
                    self._spawn(child)
            if self.nats is not None and self.nats.process.poll() is not None:
                await self._restart_nats(stop)
            await wait_event(stop, 0.5)

    async def _restart_nats(self, stop: asyncio.Event) -> None:
        """Like any child, on the same port with the same users: the children's clients
        reconnect to the URL they have; JetStream recovers its streams from disk."""
        assert self.nats is not None
        assert self.nats_port is not None
        code = self.nats.process.returncode
        quick = time.monotonic() - self.nats_started_at < 10
        self.nats_restarts = self.nats_restarts + 1 if quick else 1
        delay = min(0.25 * 2 ** min(self.nats_restarts, 6), 30.0)
        log_path = self.nats.data_dir / "nats-server.log"
        print(
            f"chorus: nats-server exited with {code}; restarting on port {self.nats_port} "
            f"in {delay:.1f}s (log: {log_path})",
            file=sys.stderr,
            flush=True,
        )
        await wait_event(stop, delay)
        if stop.is_set():
            return
        try:
            server = await asyncio.to_thread(
                start_nats_server, self.nats.data_dir, port=self.nats_port,
                config=self.nats_dir / busauth.CONFIG_NAME, monitor=False,
            )  # fmt: skip
        except (OSError, RuntimeError) as error:
            print(f"chorus: nats-server did not restart: {error}", file=sys.stderr, flush=True)
            self.nats_started_at = time.monotonic()
            return  # the dead process is still in self.nats: the next watch tries again
        self.nats = server
        self.nats_started_at = time.monotonic()

    def gateway_alive(self) -> bool:
        gateway = next(c for c in self.children if c.role == "gateway")
        return gateway.process is not None and gateway.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Gateway first (no new commands), then projector and engine, then NATS."""
        for child in reversed(self.children):
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}


async def _wait_http(url: str, timeout: float = 30.0) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=1).read())  # noqa: S310
            return True
        except OSError:
            await asyncio.sleep(0.1)
    return False


def run_up(settings: Settings, *, demo: bool = False) -> int:
    supervisor = Supervisor(settings, demo=demo)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await supervisor.start()
        # Only after a successful start, so a failed first start never swallows the key.
        admin_key = supervisor.first_admin_key()
        s = supervisor.settings
        base = f"http://{s.host}:{s.port}"
        ready = await _wait_http(f"{base}/health") and supervisor.gateway_alive()
        lines = [
            "Chorus is up" + ("" if ready else " (gateway not answering yet, see its log)"),
            f"  API        {base}/api/v1   docs {base}/schema",
            f"  console    {base}/console   metrics {base}/metrics",
            f"  NATS       {s.nats_url}"
            + ("  (embedded; each API key is its NATS credential)" if supervisor.nats else ""),
            f"  events     {s.database_url}",
            f"  read store {s.read_store_url}",
            f"  logs       {s.data_dir}/logs/",
        ]
        if demo:
            from chorus.agent_demo import FLEET

            lines.append(
                f"  demo       agents {', '.join(FLEET)} (log: {s.data_dir}/logs/demo.log)"
            )
        if admin_key:
            lines += [
                "",
                "  Admin API key (shown once, stored hashed):",
                f"    {admin_key}",
            ]
        lines += ["", "Ctrl-C stops everything."]
        print("\n".join(lines), flush=True)
        try:
            await supervisor.watch(stop)
        finally:
            print("chorus: stopping", flush=True)
            supervisor.stop()
        return 0

    try:
        return asyncio.run(main())
    except BaseException:
        supervisor.stop()
        raise
