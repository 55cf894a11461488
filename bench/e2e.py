"""End-to-end commands: agents -> NATS -> engine -> event store -> read model.

    python -m bench.e2e [--sessions 3000] [--participants 10] [--agents 50] [--window 32]
    python -m bench.e2e --rate 1000 [--seconds 20]
    python -m bench.e2e --rate 500,1000,1500,2000   (one run each; where p99 crosses 100 ms)
    python -m bench.e2e ... --database-url postgresql://user:pw@host/db?schema=s

Starts a nats-server from the wheel, the engine and the projector as separate processes
(as ``chorus up`` does) and opens sessions, whose participants acknowledge their session
tasks (``--no-accept``: they never do); then agents submit one result per session they
take part in, through NATS requests.

Sustained (default, 30,000 results): each agent keeps ``--window`` requests in flight. A
command is done when its ``accepted`` reply has arrived *and* the read model has
projected it; the run's throughput is printed whole and per 10% slice of the run's time,
so warm-up and slow-down show instead of averaging away, with the engine's and the
projector's CPU time per command (steadier than rates on a shared machine).

Open loop (``--rate R``): commands are sent at R per second on a fixed schedule whatever
the replies do (latency is measured from each command's scheduled send, so a stalled
engine cannot hide queued commands), for ``--seconds``. Prints p50/p95/p99/max of the
reply, and of the time until the read model shows the command (polled every 2 ms).

In the same run it measures raw JetStream async publishing on this machine (the bus's
own limit here) and prints the ratio, so figures from noisy shared machines can still be
compared.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
from chorus import heap
from chorus.cluster import free_port
from chorus.natsd import die_with_parent, start_nats_server

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
#: How often the read model's position is sampled (the resolution of visibility times).
POLL = 0.002


async def jetstream_baseline(
    url: str | list[str], count: int, size: int, replicas: int = 1
) -> float:
    """Messages/s of ``publish_async`` into a file stream (``replicas`` copies on a
    cluster), acks awaited at the end."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.>"], num_replicas=replicas)
    payload = os.urandom(size // 2).hex().encode()
    started = time.perf_counter()
    futures = [await js.publish_async("bench.x", payload) for _ in range(count)]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    await js.delete_stream("BENCH")
    await nc.close()
    return count / elapsed


def spawn(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "chorus.cli", role],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )


def spawn_engine(
    env: dict[str, str], work: Path, relay_in_engine: bool = False, metrics_port: int = 0
) -> list[subprocess.Popen[bytes]]:
    """The engine as ``chorus up`` runs it: ``chorus engine`` without the relay and the
    sealer, and ``chorus relay`` beside it; ``relay_in_engine``: one process for all.
    ``metrics_port``: where the engine answers Prometheus (0: nowhere)."""
    engine_env = {**env, "CHORUS_METRICS_PORT": str(metrics_port)} if metrics_port else env
    if relay_in_engine:
        return [spawn("engine", engine_env, work / "engine.log")]
    return [
        spawn("engine", {**engine_env, "CHORUS_ENGINE_RELAY": "false"}, work / "engine.log"),
        spawn("relay", env, work / "relay.log"),
    ]


class EngineView:
    """What the engine itself measured (its Prometheus histograms), between two scrapes:
    the time from a command's arrival to its reply, the time to decide and record a
    batch, and the batch size. Bucketed, so each quantile is a bucket's upper bound."""

    NAMES = ("chorus_command_reply_seconds", "chorus_engine_commit_seconds",
             "chorus_engine_batch_size")  # fmt: skip

    def __init__(self, url: str) -> None:
        self.url = url
        self.before = self.scrape()

    def scrape(self) -> dict[str, list[tuple[float, float]]]:
        """name -> cumulative (upper bound, count) buckets, and (inf, sum) under name+"_sum"."""
        from urllib.request import urlopen

        from prometheus_client.parser import text_string_to_metric_families

        with urlopen(self.url, timeout=5) as response:  # noqa: S310 - the bench's own engine
            text = response.read().decode()
        found: dict[str, list[tuple[float, float]]] = {}
        for family in text_string_to_metric_families(text):
            if family.name not in self.NAMES:
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    found.setdefault(family.name, []).append(
                        (float(sample.labels["le"]), sample.value)
                    )
                elif sample.name.endswith("_sum"):
                    found[family.name + "_sum"] = [(math.inf, sample.value)]
        return found

    def report(self) -> str:
        after = self.scrape()

        def delta(name: str) -> list[tuple[float, float]]:
            old = dict(self.before.get(name, []))
            return [(le, count - old.get(le, 0.0)) for le, count in after.get(name, [])]

        def quantile_ms(name: str, q: float) -> str:
            buckets = delta(name)
            total = buckets[-1][1] if buckets else 0
            bound = next((le for le, count in buckets if total and count >= q * total), math.inf)
            return "?" if bound == math.inf else f"<= {bound * 1000:g}"

        batches = delta("chorus_engine_batch_size")
        count = batches[-1][1] if batches else 0
        commands = delta("chorus_engine_batch_size_sum")
        mean = commands[0][1] / count if count and commands else 0.0
        reply, commit = "chorus_command_reply_seconds", "chorus_engine_commit_seconds"
        return (
            f"  in the engine: arrival -> reply  p50 {quantile_ms(reply, 0.5)}  "
            f"p99 {quantile_ms(reply, 0.99)} ms\n"
            f"  in the engine: batches          {count:>10,.0f} of {mean:.1f} commands on "
            f"average; decide + record p50 {quantile_ms(commit, 0.5)}  "
            f"p99 {quantile_ms(commit, 0.99)} ms"
        )


async def wait_for_engine(
    nc: nats.NATS, processes: Sequence[subprocess.Popen[bytes]] = (), patience: float = 120
) -> None:
    """Until the engine answers on the command subjects. A bench whose engine (or relay,
    or projector: ``processes``) died at start-up, or never answers, fails and says so,
    instead of waiting for ever."""
    deadline = time.monotonic() + patience
    while True:
        try:
            await nc.request("chorus.cmd.bench.session.ping", b"{}", timeout=1)
            return
        except Exception:
            dead = [" ".join(map(str, p.args)) for p in processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"exited at start-up (see its log): {'; '.join(dead)}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine did not answer within {patience:g} s") from None
            await asyncio.sleep(0.1)


async def request(nc: nats.NATS, subject: str, body: dict[str, object]) -> dict[str, object]:
    msg = await nc.request(subject, _enc.encode(body), timeout=30)
    reply: dict[str, object] = _dec.decode(msg.data)
    return reply


@dataclass
class Deployment:
    url: str
    work: Path
    pids: list[int]
    #: The engine's Prometheus endpoint.
    metrics_url: str
    processes: list[subprocess.Popen[bytes]]


class Watcher:
    """Samples the read model's position over time, to tell when a position became
    visible without polling once per command."""

    def __init__(self, read_db: Path) -> None:
        self.read_db = read_db
        self.times: list[float] = []
        self.positions: list[int] = []
        self._conn: sqlite3.Connection | None = None

    def position(self) -> int:
        """The sessions read model's position (one small read, on a kept connection)."""
        if self._conn is None:
            if not self.read_db.exists():
                return 0
            self._conn = sqlite3.connect(self.read_db, timeout=5)
        try:
            row = self._conn.execute(
                "SELECT position FROM tracking WHERE name='sessions'"
            ).fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0]) if row else 0

    async def run(self) -> None:
        while True:
            position = self.position()
            if not self.positions or position > self.positions[-1]:
                self.times.append(time.perf_counter())
                self.positions.append(position)
            await asyncio.sleep(POLL)

    def visible_at(self, position: int) -> float | None:
        """When the read model first showed ``position`` (None: not yet)."""
        i = bisect.bisect_left(self.positions, position)
        return self.times[i] if i < len(self.positions) else None


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)

    def at(q: float) -> float:
        return 1000 * quantile(ordered, q)

    return f"p50 {at(0.5):,.1f}  p95 {at(0.95):,.1f}  p99 {at(0.99):,.1f}  max {at(1.0):,.1f} ms"


@contextlib.asynccontextmanager
async def deployment(
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    relay_in_engine: bool = False,
) -> AsyncIterator[Deployment]:
    """A nats-server, the engine (with ``chorus relay`` beside it, as ``chorus up`` runs
    them, unless ``relay_in_engine``) and the projector as separate processes, on a fresh
    work directory; the event store at ``database_url`` (default: SQLite in the work
    directory), the read store always SQLite there (``Watcher`` reads it). ``pids``: the
    engine's processes, then the projector's. Torn down on leaving."""
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    server = start_nats_server(work / "nats", monitor=False)
    env = {
        "CHORUS_NATS_URL": server.url,
        "CHORUS_DATA_DIR": str(work),
        "CHORUS_DATABASE_URL": database_url or f"sqlite:///{work}/events.db",
        "CHORUS_READ_STORE_URL": f"sqlite:///{work}/read.db",
        # One coordinator opens every session on an open bus (where it counts as an
        # agent): the session quota would stop it at 20.
        "CHORUS_SESSION_QUOTA": "0",
        **(extra_env or {}),
    }
    port = free_port()
    procs = [*spawn_engine(env, work, relay_in_engine, port),
             spawn("project", env, work / "project.log")]  # fmt: skip
    try:
        yield Deployment(server.url, work, [p.pid for p in procs],
                         f"http://127.0.0.1:{port}/metrics", procs)  # fmt: skip
    finally:
        teardown(procs, server, work)


async def run(args: argparse.Namespace) -> None:
    async with deployment(args.database_url, relay_in_engine=args.relay_in_engine) as deployed:
        args.pids = deployed.pids
        args.metrics_url = deployed.metrics_url
        args.read_db = deployed.work / "read.db"
        baseline = await jetstream_baseline(deployed.url, args.baseline, 400)
        conns = [await nats.connect(deployed.url) for _ in range(4)]
        await wait_for_engine(conns[0], deployed.processes)
        agents = [f"agent-{i}" for i in range(args.agents)]
        watcher = Watcher(deployed.work / "read.db")
        watching = asyncio.create_task(watcher.run())
        p99s: list[tuple[float, float]] = []
        for rate in args.rate or [None]:
            if rate:
                args.sessions = max(1, int(rate * args.seconds) // args.participants)
            sessions = await open_sessions(conns, agents, args)
            header = (f"chorus bench.e2e  ({os.cpu_count()} cores, {args.sessions} sessions x "
                      f"{args.participants} participants, {args.agents} agents")  # fmt: skip
            if rate:
                p99s.append((rate, await open_loop(conns, sessions, watcher, baseline, header,
                                                   rate, args)))  # fmt: skip
            else:
                await sustained(conns, agents, sessions, watcher, baseline, header, args)
        if len(p99s) > 1:
            below = [rate for rate, p99 in p99s if p99 <= 0.1]
            crossed = [rate for rate, p99 in p99s if p99 > 0.1]
            print(f"reply p99 <= 100 ms up to {max(below, default=0):,.0f} commands/s of those "
                  f"offered; above it from {min(crossed):,.0f}" if crossed else
                  "reply p99 <= 100 ms at every rate offered")  # fmt: skip
        watching.cancel()
        for nc in conns:
            await nc.close()


async def open_sessions(
    conns: list[nats.NATS], agents: list[str], args: argparse.Namespace
) -> list[tuple[str, list[str]]]:
    sessions = []
    opens = []
    last = 0
    for s in range(args.sessions):
        sid = str(uuid.uuid4())
        members = [agents[(s + k) % len(agents)] for k in range(args.participants)]
        sessions.append((sid, members))
        opens.append(request(conns[s % len(conns)], "chorus.cmd.coordinator.session.open", {
            "command_id": f"open-{sid}",
            "payload": {"session_id": sid, "participants": members,
                        "task": {"description": "bench", "criteria": {"require": "majority"}},
                        "timeout_seconds": 3600},
        }))  # fmt: skip
        if len(opens) >= 500:
            last = max(last, await _all_accepted(opens))
    last = max(last, await _all_accepted(opens))
    if args.accept_tasks:
        # Each participant acknowledges its session task, as an agent does when the task
        # reaches its inbox; else the dispatcher re-sends every task, with its backoff,
        # all through the measured run (about 5,000 task messages a second in the open
        # loop at 1,000/s: a load no agent that follows the contract causes).
        accepts = []
        for s, (sid, members) in enumerate(sessions):
            for member in members:
                accepts.append(request(conns[s % len(conns)], f"chorus.cmd.{member}.task.accept",
                                       {"command_id": f"accept-{sid}-{member}",
                                        "payload": {"task_id": sid}}))  # fmt: skip
                if len(accepts) >= 500:
                    last = max(last, await _all_accepted(accepts))
        last = max(last, await _all_accepted(accepts))
    await settled(conns[0], args.read_db, last)
    return sessions


async def _all_accepted(requests: list[Any]) -> int:
    """Awaits the requests; returns the highest log position they were recorded at."""
    replies = await asyncio.gather(*requests)
    requests.clear()
    bad = [r for r in replies if r["status"] != "accepted"]
    assert not bad, bad[:3]
    return max((int(r.get("position") or 0) for r in replies), default=0)


async def settled(nc: nats.NATS, read_db: Path, position: int) -> None:
    """Until the set-up is behind every process: each read model has projected up to
    ``position``, and the relay's stream has stopped growing for half a second (else the
    measured run starts while the projector, the relay and the sealer still work through
    the set-up's rows, and its first seconds measure that)."""
    while True:
        with contextlib.closing(sqlite3.connect(read_db)) as db:
            try:
                row = db.execute("SELECT MIN(position), COUNT(*) FROM tracking").fetchone()
            except sqlite3.OperationalError:  # not created yet
                row = (0, 0)
        if row[1] and row[0] >= position:
            break
        await asyncio.sleep(0.05)
    js = nc.jetstream()
    last = -1
    while (count := (await js.stream_info("EVENTS")).state.messages) != last:
        last = count
        await asyncio.sleep(0.5)


def submit_body(name: str, sid: str) -> dict[str, object]:
    return {
        "command_id": f"{name}-{sid}",
        "payload": {"session_id": sid, "result": {"value": 42}, "output_hash": "sha256:abc"},
    }


async def sustained(
    conns: list[nats.NATS], agents: list[str], sessions: list[tuple[str, list[str]]],
    watcher: Watcher, baseline: float, header: str, args: argparse.Namespace,
) -> None:  # fmt: skip
    work_by_agent: dict[str, list[str]] = {a: [] for a in agents}
    for sid, members in sessions:
        for m in members:
            work_by_agent[m].append(sid)
    total = sum(len(v) for v in work_by_agent.values())
    done: list[tuple[float, int]] = []  # (reply time, position) in completion order

    async def agent(index: int, name: str) -> None:
        # ``--window`` workers share the agent's work: as many requests in flight, and no
        # more coroutines than that (one per command, all made at the start, had the
        # bench's own client spend the first slice of the run creating and parking them).
        nc = conns[index % len(conns)]
        subject = f"chorus.cmd.{name}.session.submit_result"
        work = iter(work_by_agent[name])

        async def worker() -> None:
            for sid in work:
                reply = await request(nc, subject, submit_body(name, sid))
                if reply["status"] != "accepted":
                    raise RuntimeError(f"not accepted: {reply}")
                done.append((time.perf_counter(), int(reply["position"])))  # type: ignore[call-overload]

        await asyncio.gather(*(worker() for _ in range(args.window)))

    # A profiler attached to the processes waits for this line (the set-up is behind).
    print(f"set up; measuring {total:,} commands", flush=True)
    cpu_before = [cpu_seconds(pid) for pid in args.pids]
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(agent(i, a) for i, a in enumerate(agents)))
    client_cpu = time.process_time() - client_before
    replied = time.perf_counter() - started
    last_position = max(p for _, p in done)
    while watcher.visible_at(last_position) is None:  # noqa: ASYNC110 - a file another process writes
        await asyncio.sleep(POLL)
    visible = max(replied, (watcher.visible_at(last_position) or 0) - started)
    e2e_rate = total / visible
    spent = [cpu_seconds(pid) - before for pid, before in zip(args.pids, cpu_before, strict=True)]

    print(f"{header}, window {args.window}: sustained)")
    print(f"  commands                       {total:>10,}")
    print(f"  accepted replies               {total / replied:>10,.0f} commands/s")
    print(f"  end to end (reply + projected) {e2e_rate:>10,.0f} commands/s")
    print(f"  JetStream publish_async        {baseline:>10,.0f} msgs/s  (baseline, same run)")
    print(f"  ratio end-to-end / JetStream   {e2e_rate / baseline:>10.3f}")
    print(cpu_per_command(spent, total) + " (steadier than rates when shared)")
    # The agents are this one process: if it spends a core's worth, the bench, not Chorus,
    # is the limit of the figures above.
    print(f"  bench client CPU per command   {1e6 * client_cpu / total:>10,.0f} us "
          f"({client_cpu / replied:.0%} of a core while replies arrived)")  # fmt: skip
    # A command is done when its reply has arrived and the read model shows it.
    finished = sorted(max(at, watcher.visible_at(p) or at) for at, p in done)
    width = (finished[-1] - started) / 10
    slices = [0] * 10
    for at in finished:
        slices[min(9, int((at - started) / width))] += 1
    print("  per 10% of the run's time, commands done (reply + projected) per second:")
    print("   " + " ".join(f"{count / width:,.0f}" for count in slices))
    print(f"  last slice / first slice       {slices[-1] / max(slices[0], 1):>10.2f}")


@dataclass
class OpenLoop:
    """One open-loop run: seconds from each command's scheduled send to its reply and to
    its visibility in the read model."""

    replies: list[float]
    visible: list[float]
    #: Commands answered per second, from the first scheduled send to the last reply.
    achieved: float
    #: Sends that left more than 1 ms after their schedule (the bench's own client lagging).
    late: int


async def measure_open_loop(
    conns: list[nats.NATS], sessions: list[tuple[str, list[str]]], watcher: Watcher,
    rate: float, participants: int,
) -> OpenLoop:  # fmt: skip
    """Sends one submit_result per (session, participant) at ``rate`` per second on a fixed
    schedule, whatever the replies do."""
    commands = [(member, sid) for k in range(participants) for sid, m in sessions
                for member in m[k : k + 1]]  # fmt: skip
    replies: list[float] = []
    reply_at: list[tuple[float, int]] = []  # (scheduled send, position)
    late = 0

    async def one(i: int, member: str, sid: str, at: float) -> None:
        reply = await request(conns[i % len(conns)],
                              f"chorus.cmd.{member}.session.submit_result",
                              submit_body(member, sid))  # fmt: skip
        if reply["status"] != "accepted":
            raise RuntimeError(f"not accepted: {reply}")
        replies.append(time.perf_counter() - at)
        reply_at.append((at, int(reply["position"])))  # type: ignore[call-overload]

    # One sender starts each command at its time: only the commands in flight exist as
    # tasks (not 20,000 sleeping ones, whose scans by the collector delayed the sends).
    heap.settle()
    in_flight: set[asyncio.Task[None]] = set()
    failed: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            failed.append(error)

    started = time.perf_counter() + 0.5
    for i, (member, sid) in enumerate(commands):
        at = started + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            late += 1
        task = asyncio.create_task(one(i, member, sid, at))
        in_flight.add(task)
        task.add_done_callback(finished)
    while in_flight:
        await asyncio.wait(in_flight)
    if failed:
        raise failed[0]
    achieved = len(commands) / (time.perf_counter() - started)
    last_position = max(p for _, p in reply_at)
    while watcher.visible_at(last_position) is None:  # noqa: ASYNC110 - a file another process writes
        await asyncio.sleep(POLL)
    visible = [(watcher.visible_at(p) or 0) - at for at, p in reply_at]
    return OpenLoop(replies, visible, achieved, late)


async def open_loop(
    conns: list[nats.NATS], sessions: list[tuple[str, list[str]]], watcher: Watcher,
    baseline: float, header: str, rate: float, args: argparse.Namespace,
) -> float:  # fmt: skip
    """One open-loop run at ``rate``; prints it, returns its reply p99 (seconds)."""
    cpu_before = [cpu_seconds(pid) for pid in args.pids]
    engine_view = EngineView(args.metrics_url)
    result = await measure_open_loop(conns, sessions, watcher, rate, args.participants)
    spent = [cpu_seconds(pid) - before for pid, before in zip(args.pids, cpu_before, strict=True)]
    print(f"{header}: open loop at {rate:,.0f} commands/s for {args.seconds:g} s)")
    print(f"  commands                       {len(result.replies):>10,}")
    print(f"  reply (from scheduled send)    {percentiles(result.replies)}")
    print(f"  visible in the read model      {percentiles(result.visible)}")
    print(f"  achieved                       {result.achieved:>10,.0f} commands/s")
    print(f"  sends more than 1 ms late      {result.late:>10,} (the bench's own client lagging)")
    print(engine_view.report())
    print(cpu_per_command(spent, len(result.replies)))
    print(f"  JetStream publish_async        {baseline:>10,.0f} msgs/s  (baseline, same run)")
    print(f"  offered rate / JetStream       {rate / baseline:>10.3f}")
    return quantile(sorted(result.replies), 0.99)


def cpu_per_command(spent: list[float], commands: int) -> str:
    """The line that splits the CPU seconds ``spent`` by the engine, its relay (when in a
    process of its own, as ``chorus up`` runs it) and the projector, per command."""
    per = 1e6 / commands
    engine = f"{per * sum(spent[:-1]):>10,.0f} us engine and relay"
    if len(spent) == 3:
        engine += f" ({per * spent[0]:,.0f} engine, {per * spent[1]:,.0f} relay)"
    return f"  CPU per command                {engine}, {per * spent[-1]:,.0f} us projector"


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def teardown(procs: list[subprocess.Popen[bytes]], server: Any, work: Path) -> None:
    """Stop the processes, then the nats-server, and remove the run's files."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


def rates(text: str) -> list[float]:
    return sorted(float(r) for r in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--window", type=int, default=32, help="requests in flight per agent")
    parser.add_argument("--baseline", type=int, default=20_000, help="JetStream messages")
    parser.add_argument(
        "--rate",
        type=rates,
        help="open loop: commands per second (several, "
        "comma-separated: one run each, lowest first, and where p99 crosses 100 ms)",
    )
    parser.add_argument("--seconds", type=float, default=20, help="open loop: how long")
    parser.add_argument(
        "--database-url", help="the event store (default: SQLite in the run's directory)"
    )
    parser.add_argument("--no-accept", dest="accept_tasks", action="store_false",
                        help="participants never acknowledge their session tasks (the "
                        "dispatcher re-sends them through the run)")  # fmt: skip
    parser.add_argument("--relay-in-engine", action="store_true",
                        help="run the relay and the sealer in the engine process (not as chorus up does)")  # fmt: skip
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
