"""Live feed fan-out: N WebSocket clients on one session's (or workflow's) feed, or on
the global events feed, while events are recorded.

    python -m bench.feeds [--clients 200] [--events 500] [--rate 50] [--procs 2]
                          [--feed session|workflow|events] [--auditor] [--agent-clients 0]
                          [--runs 1] [--profile FILE]

Starts a nats-server from the wheel, the engine, the relay, the projector and the gateway
as separate processes (as ``chorus up`` does). Opens a session with ``--events``
participants (``--feed workflow``: starts a workflow and its first phase) and connects
``--clients`` WebSockets to its feed (spread over ``--procs`` client processes, so the
clients do not starve the driver), then the participants submit one result each (the
phase's assignee records a partial result each) at ``--rate`` commands/s, open loop (each
send at its scheduled time, whatever the replies do). Every client must receive every
event exactly once, in position order. ``--feed events``: the clients follow
``WS /api/v1/events/feed`` (every event of the log after the session opened) while the
session's participants submit as above; the clients' key is an operator's, so they get
notices (``--auditor``: an auditor's, whole records).

Prints deliveries/s (events x clients over the time from the first send to the last
receipt), the latency from each command's send to each client's receipt of its event
(p50/p95/p99/max), split at the moment the event is seen on NATS by this process (send ->
on NATS: the engine and the relay; NATS -> receipt: the gateway and the clients), events
missed, duplicated or reordered (all must be 0), the gateway's CPU time and memory, and
the clients' CPU time (they share the machine: who is saturated shows). The clients are
picows (frames parsed in C). In the same run it measures raw JetStream async publishing
(the bus's own limit on this machine), so figures from noisy shared machines can be
compared. ``--runs N`` prints each figure's median, min and max over N runs;
``--profile FILE`` samples the gateway with py-spy (raw stacks) while events flow.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
from chorus.contracts.subjects import event_filter
from chorus.natsd import start_nats_server
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.e2e import (
    cpu_seconds,
    jetstream_baseline,
    request,
    spawn,
    spawn_engine,
    teardown,
    wait_for_engine,
)

SETTLE = 1.0  # seconds between the last client joining and the first event


class _Event(msgspec.Struct):
    position: int
    type: str
    #: A notice's event type (the events feed's non-auditors): its ``type`` is "event".
    event: str = ""


_decode = msgspec.json.Decoder(_Event).decode


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Client processes -------------------------------------------------------------------------


class _Client(WSListener):
    """One socket: answers the first ``pong`` (the feed is live), then records the
    position and receipt time of every event until the run's last event. picows
    parses frames in C and calls back without a task per socket, so the clients spend
    a few microseconds per message (the ``websockets`` client spent 18-46) and the
    figures measure the gateway rather than its clients."""

    def __init__(self, record: bool, last_event: str = "") -> None:
        self.record = record
        self.last_event = last_event
        self.positions: array[int] = array("q")
        self.times: array[float] = array("d")
        loop = asyncio.get_running_loop()
        self.live: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, b"ping")

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        if not self.live.done():
            if frame.get_payload_as_bytes() == b"pong":
                self.live.set_result(None)
            return
        if not self.record:
            return
        event = _decode(frame.get_payload_as_memoryview())
        self.positions.append(event.position)
        self.times.append(time.time())
        if self.last_event in (event.type, event.event) and not self.finished.done():
            self.finished.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def _connect(url: str, record: bool, last_event: str = "") -> tuple[WSTransport, _Client]:
    transport, client = await ws_connect(lambda: _Client(record, last_event), url)
    await client.live
    return transport, client


async def _clients(
    url: str, count: int, agents_url: str, agents_count: int, ready: Any, go: Any,
    timeout: float, last_event: str,
) -> list[Any]:  # fmt: skip
    """Connect ``count`` sockets (and ``agents_count`` on the agents feed, which only
    add load), say so, then record (position, receipt time) of every event until each
    socket has seen ``last_event`` (or ``timeout`` passes)."""
    sockets = [await _connect(url, True, last_event) for _ in range(count)]
    watchers = [await _connect(agents_url, False) for _ in range(agents_count)]
    ready.put(count)
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    cpu_at_go = time.process_time()
    await asyncio.wait([client.finished for _, client in sockets], timeout=timeout)
    cpu = time.process_time() - cpu_at_go
    for transport, _ in sockets + watchers:
        transport.send_close()
        transport.disconnect()
    return [cpu, *((c.positions.tobytes(), c.times.tobytes()) for _, c in sockets)]


def client_process(*args: Any) -> None:
    """One client process: its CPU seconds while receiving, then each socket's receipts."""
    *arguments, out = args
    out.put(asyncio.run(_clients(*arguments)))


# What the run records -------------------------------------------------------------------


class SessionRun:
    """One session with a participant per event, each submitting one result; it is
    finalised by the last one."""

    aggregate, route, last_event = "session", "sessions", "SessionFinalised"

    def __init__(self, nc: nats.NATS, events: int) -> None:
        self.nc = nc
        self.id = str(uuid.uuid4())
        self.participants = [f"p{i}" for i in range(events)]

    async def open(self) -> int:
        """Its position before the first event the clients count."""
        opened = await request(self.nc, "chorus.cmd.coordinator.session.open", {
            "command_id": f"open-{self.id}",
            "payload": {"session_id": self.id, "participants": self.participants,
                        "task": {"description": "bench", "criteria": {"require": "all"}},
                        "timeout_seconds": 3600},
        })  # fmt: skip
        assert opened["status"] == "accepted", opened
        return int(opened["position"])  # type: ignore[call-overload]

    async def event(self, i: int) -> dict[str, object]:
        return await request(self.nc, f"chorus.cmd.{self.participants[i]}.session.submit_result", {
            "command_id": f"r-{i}-{self.id}",
            "payload": {"session_id": self.id, "result": {"n": i}, "output_hash": "sha256:x"},
        })  # fmt: skip

    async def finish(self) -> None:
        """Nothing: the last result finalises the session."""


class WorkflowRun:
    """One workflow whose first phase's assignee records a partial result per event,
    then completes the phase."""

    aggregate, route, last_event = "workflow", "workflows", "PhaseCompleted"
    assignee, phase = "bench-agent", "implement"

    def __init__(self, nc: nats.NATS, events: int) -> None:
        self.nc = nc
        self.id = str(uuid.uuid4())

    async def command(self, actor: str, name: str, key: str, **payload: Any) -> dict[str, object]:
        reply = await request(self.nc, f"chorus.cmd.{actor}.workflow.{name}", {
            "command_id": f"{key}-{self.id}", "payload": {"workflow_id": self.id, **payload},
        })  # fmt: skip
        assert reply["status"] == "accepted", reply
        return reply

    async def open(self) -> int:
        await self.command("ops", "start", "start", requirements="bench", workflow_type="quick")
        started = await self.command(
            "ops", "start_phase", "phase", phase=self.phase, assignee=self.assignee
        )
        return int(started["position"])  # type: ignore[call-overload]

    async def event(self, i: int) -> dict[str, object]:
        return await self.command(
            self.assignee, "record_partial_result", f"r-{i}", phase=self.phase, result={"n": i}
        )

    async def finish(self) -> None:
        await self.command(self.assignee, "complete_phase", "done", phase=self.phase)


# Gateway process figures ------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def profile(pid: int, out: str) -> subprocess.Popen[bytes]:
    """py-spy (``pip install py-spy``) sampling the gateway, until interrupted."""
    spy = shutil.which("py-spy") or "py-spy"
    return subprocess.Popen(
        [spy, "record", "-r", "200", "-f", "raw", "--pid", str(pid), "-o", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


# The run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, float]:
    """One run: its figures."""
    from chorus.gateway.keys import KeyStore

    work = Path(tempfile.mkdtemp(prefix="chorus-bench-feeds-"))
    server = start_nats_server(work / "nats", monitor=False)
    port = free_port()
    env = {
        "CHORUS_NATS_URL": server.url,
        "CHORUS_DATA_DIR": str(work),
        "CHORUS_DATABASE_URL": f"sqlite:///{work}/events.db",
        "CHORUS_READ_STORE_URL": f"sqlite:///{work}/read.db",
        # One coordinator opens every session on an open bus (where it counts as an
        # agent): the session quota would stop it at 20.
        "CHORUS_SESSION_QUOTA": "0",
        "CHORUS_HOST": "127.0.0.1",
        "CHORUS_PORT": str(port),
        "CHORUS_LOG_LEVEL": "WARNING",
        # Every client signs in as one watcher: the per-actor bound on opening sockets
        # (120/minute by default) would refuse most of them (403 at the handshake).
        "CHORUS_RATE_LIMITS": '{"feed": "100000/minute"}',
    }
    role = "auditor" if args.auditor else "operator"
    token = KeyStore(work / "keys.db").create("bench-watcher", role)
    procs = [*spawn_engine(env, work), *(spawn(role, env, work / f"{role}.log")
                                         for role in ("project", "gateway"))]  # fmt: skip
    gateway_pid = procs[-1].pid
    ctx = multiprocessing.get_context("spawn")
    clients: list[Any] = []
    try:
        baseline = await jetstream_baseline(server.url, args.baseline, 400)
        nc = await nats.connect(server.url)
        await wait_for_engine(nc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

        target = (WorkflowRun if args.feed == "workflow" else SessionRun)(nc, args.events)
        since = await target.open()
        path = "events/feed" if args.feed == "events" else f"{target.route}/{target.id}/feed"
        url = f"ws://127.0.0.1:{port}/api/v1/{path}?since={since}&token={token}"
        agents_url = f"ws://127.0.0.1:{port}/api/v1/agents/feed?token={token}"

        ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()

        def share(total: int, i: int) -> int:
            return total // args.procs + (i < total % args.procs)

        timeout = args.events / args.rate + args.drain
        for i in range(args.procs):
            process = ctx.Process(
                target=client_process,
                args=(url, share(args.clients, i), agents_url, share(args.agent_clients, i),
                      ready, go, timeout, target.last_event, out),
                daemon=True,
            )  # fmt: skip
            process.start()
            clients.append(process)
        joined = 0
        while joined < args.clients:
            joined += await asyncio.to_thread(ready.get, True, 300)
        await asyncio.sleep(SETTLE)
        rss_before, cpu_before = rss_mb(gateway_pid), cpu_seconds(gateway_pid)

        on_bus: dict[int, float] = {}  # position -> when this process saw it on NATS

        async def seen(msg: Any) -> None:
            on_bus[int((msg.headers or {}).get("Chorus-Position", 0))] = time.time()

        probe = await nc.subscribe(event_filter(target.aggregate, target.id), cb=seen)
        profiler = profile(gateway_pid, args.profile) if args.profile else None
        go.set()
        sent_at: dict[int, float] = {}
        started = time.time()

        async def submit(i: int) -> None:
            delay = started + i / args.rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            at = time.time()
            reply = await target.event(i)
            assert reply["status"] == "accepted", reply
            sent_at[int(reply["position"])] = at  # type: ignore[call-overload]

        await asyncio.gather(*(submit(i) for i in range(args.events)))
        await target.finish()
        results: list[Any] = []
        clients_cpu = 0.0
        for _ in clients:
            cpu, *received = await asyncio.to_thread(out.get, True, timeout + 300)
            clients_cpu += cpu
            results += received
        cpu_used = cpu_seconds(gateway_pid) - cpu_before
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        rss_peak = rss_mb(gateway_pid)
        await asyncio.sleep(2)
        rss_after = rss_mb(gateway_pid)
        await probe.unsubscribe()
        await nc.close()

        latencies: list[float] = []
        fan_out: list[float] = []  # from the bus to each client
        bus = sorted(on_bus[p] - at for p, at in sent_at.items() if p in on_bus)
        missed = duplicated = out_of_order = deliveries = 0
        expected = set(sent_at)
        last_receipt = started
        for raw_positions, raw_times in results:
            positions: array[int] = array("q")
            positions.frombytes(raw_positions)
            times: array[float] = array("d")
            times.frombytes(raw_times)
            deliveries += len(positions)
            seen = set(positions)
            duplicated += len(positions) - len(seen)
            missed += len(expected - seen)
            out_of_order += sum(1 for a, b in itertools.pairwise(positions) if b <= a)
            for position, at in zip(positions, times, strict=True):
                last_receipt = max(last_receipt, at)
                if position in sent_at:
                    latencies.append(at - sent_at[position])
                if position in on_bus:
                    fan_out.append(at - on_bus[position])
        latencies.sort()
        fan_out.sort()
        elapsed = last_receipt - started
        per_delivery = 1e6 / max(deliveries, 1)
        return {
            "deliveries/s": deliveries / elapsed,
            "p50 ms": 1000 * percentile(latencies, 0.5),
            "p95 ms": 1000 * percentile(latencies, 0.95),
            "p99 ms": 1000 * percentile(latencies, 0.99),
            "max ms": 1000 * percentile(latencies, 1.0),
            "bus p50 ms": 1000 * percentile(bus, 0.5),
            "bus p99 ms": 1000 * percentile(bus, 0.99),
            "fan-out p50 ms": 1000 * percentile(fan_out, 0.5),
            "fan-out p99 ms": 1000 * percentile(fan_out, 0.99),
            "missed": missed,
            "duplicated": duplicated,
            "reordered": out_of_order,
            "gateway us/delivery": cpu_used * per_delivery,
            "gateway cores": cpu_used / elapsed,
            "clients us/delivery": clients_cpu * per_delivery,
            "clients cores": clients_cpu / elapsed,
            "gateway MB before": rss_before,
            "gateway MB end": rss_peak,
            "gateway MB after": rss_after,
            "JetStream msgs/s": baseline,
            "ratio": deliveries / elapsed / baseline,
            "load": os.getloadavg()[0],
        }
    finally:
        for process in clients:
            process.kill()
        teardown(procs, server, work)


#: What each ``--feed`` follows, for the report.
FEEDS = {
    "session": "one session's feed",
    "workflow": "one workflow's feed",
    "events": "the global events feed",
}

#: (figure, label, format, unit) of the summary table, in order.
ROWS = (
    ("deliveries/s", "deliveries/s", ",.0f", ""),
    ("p50 ms", "send -> receipt p50", ",.0f", "ms"),
    ("p95 ms", "send -> receipt p95", ",.0f", "ms"),
    ("p99 ms", "send -> receipt p99", ",.0f", "ms"),
    ("max ms", "send -> receipt max", ",.0f", "ms"),
    ("bus p50 ms", "send -> on NATS p50", ",.0f", "ms (engine and relay)"),
    ("bus p99 ms", "send -> on NATS p99", ",.0f", "ms"),
    ("fan-out p50 ms", "NATS -> receipt p50", ",.0f", "ms (gateway and clients)"),
    ("fan-out p99 ms", "NATS -> receipt p99", ",.0f", "ms"),
    ("missed", "missed", ",.0f", ""),
    ("duplicated", "duplicated", ",.0f", ""),
    ("reordered", "reordered", ",.0f", ""),
    ("gateway us/delivery", "gateway CPU per delivery", ",.1f", "us"),
    ("gateway cores", "gateway CPU", ".2f", "cores"),
    ("clients us/delivery", "clients' CPU per delivery", ",.1f", "us (bench clients)"),
    ("clients cores", "clients' CPU", ".2f", "cores (bench clients)"),
    ("gateway MB before", "gateway memory before", ",.0f", "MB"),
    ("gateway MB end", "gateway memory at the end", ",.0f", "MB"),
    ("gateway MB after", "gateway memory 2 s after", ",.0f", "MB"),
    ("JetStream msgs/s", "JetStream publish_async", ",.0f", "msgs/s (baseline, same run)"),
    ("ratio", "ratio deliveries / JetStream", ".3f", ""),
    ("load", "load average (1 min) at the end", ".2f", ""),
)


def report(args: argparse.Namespace, runs: list[dict[str, float]]) -> None:
    """Each figure's median, min and max over the runs (one run: just its figures)."""
    print(
        f"chorus bench.feeds  ({os.cpu_count()} cores, {args.clients} clients on "
        f"{FEEDS[args.feed]}{' (whole records)' if args.auditor else ''}, {args.events} "
        f"events at {args.rate:g}/s, {args.procs} client processes, "
        f"{args.agent_clients} agents-feed sockets, {len(runs)} run(s))"
    )
    print(f"  {'':36} {'median':>10} {'min':>10} {'max':>10}")
    for key, label, spec, unit in ROWS:
        values = sorted(run[key] for run in runs)
        cells = [format(v, spec) for v in (statistics.median(values), values[0], values[-1])]
        print(f"  {label:36} {cells[0]:>10} {cells[1]:>10} {cells[2]:>10}  {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument(
        "--feed", choices=tuple(FEEDS), default="session",
        help="session: a result per participant; workflow: partial results of one assignee; "
        "events: the global events feed while a session's participants submit",
    )  # fmt: skip
    parser.add_argument(
        "--auditor", action="store_true",
        help="the clients' key is an auditor's (events feed: whole records, not notices)",
    )  # fmt: skip
    parser.add_argument("--events", type=int, default=500, help="results submitted")
    parser.add_argument("--rate", type=float, default=50, help="results submitted per second")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument(
        "--agent-clients", type=int, default=0, help="extra sockets on the agents feed (load)"
    )
    parser.add_argument("--drain", type=float, default=60, help="seconds to wait after sending")
    parser.add_argument("--baseline", type=int, default=20_000, help="JetStream messages")
    parser.add_argument(
        "--profile", help="py-spy the gateway while events flow (raw stacks to this file)"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs (median, min and max)")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        runs.append(asyncio.run(run(args)))
        if args.runs > 1:
            figures = runs[-1]
            print(
                f"run {i + 1}: {figures['deliveries/s']:,.0f} deliveries/s, p99 "
                f"{figures['p99 ms']:,.0f} ms, ratio {figures['ratio']:.3f}, load "
                f"{figures['load']:.2f}",
                flush=True,
            )
    report(args, runs)


if __name__ == "__main__":
    main()
