"""``chorus up``: the embedded deployment on one machine, as a small process supervisor.

Starts a nats-server (unless ``CHORUS_NATS_URL`` names one), then the engine, projector
and gateway as child processes (so they use every core), restarts a child that dies, and
on Ctrl-C / SIGTERM stops them all. Each child also gets SIGTERM if the supervisor itself
is killed (PR_SET_PDEATHSIG), so no orphan survives.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats

from contracts.aio import wait_event
from contracts.workflow_types import WorkflowTypeRegistry
from engine.streams import ensure_streams
from events.bundle import create_signing_key
from gateway.keys import KeyStore
from runtime.natsd import NatsServer, die_with_parent, start_nats_server
from runtime.settings import Settings

ROLES = ("engine", "project", "gateway")


@dataclass
class Child:
    role: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)


class Supervisor:
    def __init__(self, settings: Settings, *, out: object = None) -> None:
        self.settings = settings.resolved()
        self.nats: NatsServer | None = None
        self.children = [Child(role) for role in ROLES]
        self.stopping = False

    def _spawn(self, child: Child) -> None:
        env = {**_base_env(), **self.settings.child_env()}
        log_path = Path(self.settings.data_dir) / "logs" / f"{child.role}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "runtime.cli", child.role],
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
        s.data_dir.mkdir(parents=True, exist_ok=True)
        # The embedded deployment signs audit bundles; the gateway never creates the key.
        create_signing_key(Path(str(s.audit_key_path)))
        try:  # fail fast with the reason, instead of a gateway that keeps restarting
            WorkflowTypeRegistry.load(s.workflow_types)
        except ValueError as error:
            raise SystemExit(f"chorus: {error}") from None
        if not s.nats_url:
            self.nats = start_nats_server(Path(s.data_dir) / "nats")
            self.settings = s = s.model_copy(update={"nats_url": self.nats.url})
        assert s.nats_url is not None
        try:
            nc = await nats.connect(
                s.nats_url, name="chorus-up", connect_timeout=5, max_reconnect_attempts=2
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
            return store.create("admin", "admin")
        return None

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart children that exit, with a growing pause if they keep failing."""
        while not stop.is_set():
            for child in self.children:
                assert child.process is not None
                code = child.process.poll()
                if code is None:
                    continue
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
                print("chorus: nats-server exited; stopping", file=sys.stderr, flush=True)
                stop.set()
            await wait_event(stop, 0.5)

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


def run_up(settings: Settings) -> int:
    supervisor = Supervisor(settings)

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
        ready = await _wait_http(f"{base}/health")
        lines = [
            "Chorus is up" + ("" if ready else " (gateway not answering yet, see its log)"),
            f"  API        {base}/api/v1   docs {base}/schema",
            f"  NATS       {s.nats_url}" + ("  (embedded)" if supervisor.nats else ""),
            f"  events     {s.database_url}",
            f"  read store {s.read_store_url}",
            f"  logs       {s.data_dir}/logs/",
        ]
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
